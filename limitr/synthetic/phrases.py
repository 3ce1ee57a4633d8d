"""How a report words one finding: several phrasings and synonyms per finding, hedged
wording for uncertain ones, and the CheXpert labels each sentence carries.

Each finding gets a :class:`Mention`: a noun ``phrase`` (the words that name it, an exact
substring of its FINDINGS sentence, used as the MS-CXR ``label_text``), the FINDINGS
sentence(s) and the IMPRESSION sentence(s). The vocabulary is chosen so that a plain
keyword labeller reads the same labels back: no sentence mixes a positive mention with
negation or hedging cues, and support-device words never appear in other sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from limitr.synthetic.findings import Finding

Labels = dict[str, float]


@dataclass(frozen=True)
class Sentence:
    """One sentence of a report and the labels it asserts (1.0, 0.0 or -1.0)."""

    text: str
    labels: Labels = field(default_factory=dict)


@dataclass(frozen=True)
class Mention:
    """How a report mentions one finding."""

    phrase: str
    findings: tuple[Sentence, ...]
    impression: tuple[Sentence, ...]


def pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(rng: np.random.Generator, phrase: str, templates: list[str]) -> tuple[str, str]:
    """A sentence from one of ``templates`` ("{p}" marks the phrase) and the phrase as it
    appears in it (capitalised when it opens the sentence)."""
    template = pick(rng, templates)
    shown = _cap(phrase) if template.startswith("{p}") else phrase
    return template.replace("{p}", shown), shown


_LOBES = {
    ("right", "upper"): ["right upper lobe"], ("right", "middle"): ["right middle lobe"],
    ("right", "lower"): ["right lower lobe"], ("left", "upper"): ["left upper lobe"],
    ("left", "middle"): ["lingula"], ("left", "lower"): ["left lower lobe"],
}
_ZONE_WORD = {"upper": "upper lung", "middle": "mid lung", "lower": "lung base"}
_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}
_SIZE = {"small": ["small", "small", "trace"], "moderate": ["moderate", "moderate-sized"], "large": ["large"]}
_HEDGED = ["Possible {p}.", "There may be a {p}.", "A {p} cannot be excluded."]
_POSITIVE = ["There is a {p}.", "{p} is present.", "{p} is noted.", "A {p} is seen."]


def mention(f: Finding, rng: np.random.Generator) -> Mention:
    """The words a report uses for finding ``f``."""
    sure = f.certainty != "uncertain"
    value = 1.0 if sure else -1.0
    if f.type == "cardiomegaly":
        g = f.grade or "mild"
        options = [(f"{g} cardiomegaly", ["There is {p}.", "{p}."]),
                   (f"heart is {_ADVERB[g]} enlarged", ["The {p}."]),
                   (f"{g} enlargement of the cardiac silhouette", ["{p}.", "There is {p}."]),
                   (f"heart size is {_ADVERB[g]} enlarged", ["{p}."])]
        phrase, templates = options[int(rng.integers(len(options)))]
        text, shown = _sentence(rng, phrase, templates)
        lab = {"Cardiomegaly": 1.0}
        imp = pick(rng, [f"{_cap(g)} cardiomegaly.", "Cardiomegaly."])
        return Mention(shown, (Sentence(text, lab),), (Sentence(imp, lab),))
    if f.type == "pleural_effusion":
        size = pick(rng, _SIZE[f.size or "small"])
        if f.side == "bilateral":
            phrase = pick(rng, [f"{size} bilateral pleural effusions", f"{size} pleural effusions bilaterally",
                                f"{size} bilateral effusions"])
        else:
            phrase = pick(rng, [f"{size} {f.side} pleural effusion", f"{size} {f.side} effusion",
                                f"{size} {f.side}-sided pleural effusion"])
        plural = f.side == "bilateral"
        if sure:
            templates = ["There are {p}.", "{p} are present.", "{p} are noted."] if plural else _POSITIVE
            if f.size == "small" and not plural:
                templates = templates + ["{p} blunts the posterior costophrenic angle on the lateral view."]
        else:
            templates = ["Possible {p}.", "{p} cannot be excluded."] if plural else _HEDGED
        text, shown = _sentence(rng, phrase, templates)
        lab = {"Pleural Effusion": value}
        imp = text if not sure else _cap(phrase) + "."
        return Mention(shown, (Sentence(text, lab),), (Sentence(imp, lab),))
    if f.type == "pneumothorax":
        size = pick(rng, _SIZE[f.size or "small"][:2]) if f.size != "small" else "small"
        if f.size == "small":
            phrase = pick(rng, [f"small {f.side} apical pneumothorax", f"tiny {f.side} apical pneumothorax"])
        else:
            phrase = pick(rng, [f"{size} {f.side} pneumothorax", f"{size} {f.side}-sided pneumothorax"])
        text, shown = _sentence(rng, phrase, _POSITIVE)
        lab = {"Pneumothorax": 1.0}
        return Mention(shown, (Sentence(text, lab),), (Sentence(_cap(phrase) + ".", lab),))
    if f.type == "consolidation":
        return _consolidation(f, rng, value)
    if f.type == "atelectasis":
        kind = pick(rng, ["minimal", "subsegmental", "linear"] if f.grade == "mild" else ["plate-like", "moderate"])
        if f.zone == "retrocardiac":
            phrase = pick(rng, ["retrocardiac atelectasis", f"{kind} left retrocardiac atelectasis"])
        elif f.side == "bilateral":
            phrase = pick(rng, ["bibasilar atelectasis", f"{kind} bibasilar atelectasis",
                                f"{kind} atelectasis at both lung bases"])
        else:
            phrase = pick(rng, [f"{kind} atelectasis at the {f.side} lung base", f"{f.side} basilar atelectasis",
                                f"{kind} {f.side} basilar atelectasis"])
        templates = ["There is {p}.", "{p} is present.", "{p}."] if sure else ["Possible {p}.", "{p} is likely."]
        text, shown = _sentence(rng, phrase, templates)
        lab = {"Atelectasis": value}
        return Mention(shown, (Sentence(text, lab),), (Sentence(text if not sure else _cap(phrase) + ".", lab),))
    if f.type == "edema":
        g = f.grade or "mild"
        phrase = pick(rng, [f"{g} pulmonary edema", f"{g} interstitial edema", f"{g} interstitial pulmonary edema"]
                      if g != "severe" else ["severe pulmonary edema", "severe alveolar pulmonary edema"])
        if sure:
            templates = ["There is {p}.", "{p} is present, with perihilar haziness and indistinct pulmonary vessels.",
                         "Findings are consistent with {p}.", "{p}."]
        else:
            templates = ["Possible {p}.", "There may be {p}."]
        text, shown = _sentence(rng, phrase, templates)
        lab = {"Edema": value}
        sentences = [Sentence(text, lab)]
        if g != "mild" and rng.random() < 0.5:
            sentences.append(Sentence("Kerley B lines are seen at the lung bases."))
        return Mention(shown, tuple(sentences), (Sentence(text if not sure else _cap(phrase) + ".", lab),))
    if f.type in ("nodule", "mass"):
        zone = {"upper": "upper", "middle": "mid", "lower": "lower"}[f.zone or "middle"]
        if f.type == "nodule":
            n = f"{f.size_mm} mm"
            phrase = pick(rng, [f"{n} nodule in the {f.side} {zone} lung", f"{n} {f.side} {zone} lung nodule",
                                f"{f.side} {zone} lung nodule measuring {n}"])
        else:
            c = f"{int(round((f.size_mm or 30) / 10))} cm"
            phrase = pick(rng, [f"{c} mass in the {f.side} {zone} lung", f"{f.side} {zone} lung mass measuring {c}",
                                f"{c} {f.side} {zone} lung mass"])
        text, shown = _sentence(rng, phrase, _POSITIVE if sure else _HEDGED)
        lab = {"Lung Lesion": value}
        imp = [Sentence(text if not sure else _cap(phrase) + ".", lab)]
        if rng.random() < 0.6:
            imp.append(Sentence("Recommend chest CT for further evaluation."))
        return Mention(shown, (Sentence(text, lab),), tuple(imp))
    if f.type == "support_device":
        text = device_sentence(f, rng)
        lab = {"Support Devices": 1.0}
        return Mention(text.rstrip("."), (Sentence(text, lab),), (Sentence(text, lab),))
    raise ValueError(f"no wording for finding type {f.type!r}")


def _consolidation(f: Finding, rng: np.random.Generator, value: float) -> Mention:
    side, zone = f.side or "right", f.zone or "lower"
    lobe = pick(rng, _LOBES[(side, zone)])
    lobe_adj = "lingular" if lobe == "lingula" else lobe
    extent = pick(rng, ["focal", "patchy"] if f.size == "small" else ["dense", "extensive"])
    described = f.described_as or "consolidation"
    if described == "consolidation":
        phrase = pick(rng, [f"{extent} consolidation in the {lobe}", f"{extent} {lobe_adj} consolidation",
                            f"{lobe_adj} consolidation"])
        templates = ["There is {p}.", "{p} is present.", "{p} is seen, with air bronchograms."]
        if zone == "middle":
            templates = [f"There is {{p}}, obscuring the {side} cardiac border."]
        text, shown = _sentence(rng, phrase, templates)
        lab = {"Consolidation": 1.0}
        return Mention(shown, (Sentence(text, lab),), (Sentence(_cap(phrase) + ".", lab),))
    if described == "pneumonia":
        phrase = pick(rng, [f"{lobe_adj} pneumonia", f"pneumonia in the {lobe}", f"{extent} {lobe_adj} pneumonia"])
        if value > 0:
            templates = ["{p}.", "Findings are consistent with {p}.", "There is {p}."]
        else:
            templates = ["Findings may represent {p}.", "Possible {p}.", "Findings could reflect {p}."]
        text, shown = _sentence(rng, phrase, templates)
        lab = {"Pneumonia": value}
        imp = text if value < 0 else _cap(phrase) + "."
        return Mention(shown, (Sentence(text, lab),), (Sentence(imp, lab),))
    # an opacity, with or without a hedged cause
    where = pick(rng, [f"in the {lobe}", f"in the {side} {_ZONE_WORD[zone]}"])
    phrase = pick(rng, [f"{extent} opacity {where}", f"{extent} {side} {_ZONE_WORD[zone]} opacity"])
    text, shown = _sentence(rng, phrase, ["There is {p}.", "{p} is noted."])
    sentences = [Sentence(text, {"Lung Opacity": 1.0})]
    r = rng.random()
    if r < 0.4:
        sentences.append(Sentence("This may represent atelectasis or pneumonia.", {"Atelectasis": -1.0, "Pneumonia": -1.0}))
    elif r < 0.75:
        sentences.append(Sentence(pick(rng, ["This could reflect pneumonia.", "Pneumonia cannot be excluded."]),
                                  {"Pneumonia": -1.0}))
    imp = (Sentence(_cap(phrase) + ".", {"Lung Opacity": 1.0}),) + tuple(sentences[1:])
    return Mention(shown, tuple(sentences), imp)


def tube_tip_cm(f: Finding) -> int:
    """Centimetres from an endotracheal tube's tip to the carina (variant ``tip_Ncm``)."""
    digits = "".join(c for c in (f.variant or "") if c.isdigit())
    return int(digits) if digits else 4


def device_sentence(f: Finding, rng: np.random.Generator) -> str:
    """The sentence that places a support device."""
    side = _cap(f.side or "right")
    if f.device == "endotracheal_tube":
        cm = tube_tip_cm(f)
        return pick(rng, [f"Endotracheal tube terminates {cm} cm above the carina.",
                          f"An endotracheal tube is in standard position, {cm} cm above the carina.",
                          f"ET tube tip is {cm} cm above the carina."])
    if f.device == "enteric_tube":
        return pick(rng, ["An enteric tube courses below the diaphragm with its tip in the stomach.",
                          "Nasogastric tube terminates in the stomach.",
                          "An orogastric tube is seen with the tip in the stomach."])
    if f.device == "central_line":
        tip = pick(rng, ["mid SVC", "lower SVC", "cavoatrial junction"])
        if f.variant == "internal_jugular":
            return pick(rng, [f"{side} internal jugular central venous catheter terminates in the {tip}.",
                              f"{side} internal jugular catheter tip is in the {tip}."])
        return pick(rng, [f"{side} subclavian central line ends in the {tip}.",
                          f"{side} subclavian catheter tip projects over the {tip}."])
    if f.device == "pacemaker":
        if f.variant == "dual_chamber":
            return pick(rng, [f"{side}-sided pacemaker with leads in the right atrium and right ventricle.",
                              f"{side} chest wall dual-chamber pacemaker is in place."])
        return pick(rng, [f"{side}-sided pacemaker with a single lead in the right ventricle.",
                          f"{side} chest wall pacer device with its lead in the right ventricle."])
    if f.device == "chest_tube":
        return pick(rng, [f"{side} chest tube is in place with the tip at the apex.",
                          f"A {(f.side or 'right')}-sided chest tube is present, terminating near the apex."])
    raise ValueError(f"unknown device {f.device!r}")
