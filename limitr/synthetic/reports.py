"""Radiology reports in the MIMIC-CXR text layout, with CheXpert labels that agree with them.

Layout: a centred ``FINAL REPORT`` title; inline headers (``EXAMINATION:``, ``INDICATION:``,
``TECHNIQUE:``, ``COMPARISON:``); block headers ``FINDINGS:`` and ``IMPRESSION:`` (or
``CONCLUSION:``) followed by a blank line and their paragraphs; every line starts with one
space and blank lines hold one space; lines wrap at 79 characters; ``___`` marks
de-identified spans; an addendum comes first, separated by a line of underscores.

Labels: every sentence carries the labels it asserts; a report's label for an observation
is 1.0 if any included sentence is positive, else -1.0 if any is hedged, else 0.0 if any
negates it, else empty. ``No Finding`` is 1.0 when no observation but Support Devices is
1.0 or -1.0.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from limitr.data.schema import CHEXPERT_LABELS
from limitr.synthetic.findings import Finding
from limitr.synthetic.phrases import Sentence, mention, pick

TITLE_INDENT = 33
WRAP = 78  # plus the leading space: 79 characters
SEPARATOR = " " + "_" * 78

_REASONS = ["cough", "shortness of breath", "chest pain", "fever", "dyspnea", "hypoxia",
            "evaluate for pneumonia", "evaluate for interval change", "preoperative evaluation",
            "fall", "weakness", "tachycardia", "productive cough and fever"]
_REASONS_ICU = ["intubated, assess tube position", "line placement", "respiratory failure",
                "hypoxia", "post-procedure evaluation"]


@dataclass(frozen=True)
class ReportParts:
    """Everything that makes one report's text, kept so faults can re-lay it out."""

    exam: str
    indication_header: str
    indication: str
    technique: str
    comparison: str
    findings: tuple[Sentence, ...]
    impression: tuple[Sentence, ...]
    impression_header: Optional[str]  # IMPRESSION | CONCLUSION | None (findings only)
    has_findings: bool
    numbered: bool
    sentence_gap: str
    addendum: Optional[str] = None


@dataclass(frozen=True)
class Report:
    """A report: its ``text``, the 14 ``labels`` (None = not mentioned), the phrase naming
    each definite finding (index -> exact words in the text) and the ``parts``."""

    text: str
    labels: dict[str, Optional[float]]
    phrases: dict[int, str]
    parts: ReportParts = field(repr=False)


def _wrap(text: str) -> list[str]:
    return [" " + line for line in textwrap.wrap(text, width=WRAP, break_long_words=False,
                                                   break_on_hyphens=False)] or [" "]


def layout(parts: ReportParts, headers: bool = True) -> str:
    """The report file's text. ``headers=False`` drops the FINDINGS / IMPRESSION headers
    (some real reports are free text after the preamble)."""
    lines = [" " * TITLE_INDENT + "FINAL REPORT"]
    if parts.addendum:
        lines = [" " * TITLE_INDENT + "ADDENDUM", *_wrap(parts.addendum), " ", SEPARATOR, *lines]
    for name, value in (("EXAMINATION", parts.exam), (parts.indication_header, parts.indication),
                        ("TECHNIQUE", parts.technique), ("COMPARISON", parts.comparison)):
        lines += _wrap(f"{name}:  {value}") + [" "]
    gap = parts.sentence_gap
    if parts.has_findings:
        if headers:
            lines += [" FINDINGS: ", " "]
        lines += _wrap(gap.join(s.text for s in parts.findings)) + [" "]
    if parts.impression_header:
        if headers:
            lines += [f" {parts.impression_header}: ", " "]
        if parts.numbered:
            for i, s in enumerate(parts.impression, 1):
                lines += _wrap(f"{i}. {s.text}")
        else:
            lines += _wrap(gap.join(s.text for s in parts.impression))
    else:
        lines = lines[:-1]
    return "\n".join(lines) + "\n"


def aggregate_labels(sentences: list[Sentence]) -> dict[str, Optional[float]]:
    """The 14 CheXpert labels of a set of sentences (see the module docstring)."""
    found: dict[str, set[float]] = {}
    for s in sentences:
        for name, value in s.labels.items():
            found.setdefault(name, set()).add(value)
    labels: dict[str, Optional[float]] = {}
    for name in CHEXPERT_LABELS:
        values = found.get(name, set())
        labels[name] = 1.0 if 1.0 in values else -1.0 if -1.0 in values else 0.0 if 0.0 in values else None
    pathology = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    labels["No Finding"] = None if any(labels[n] in (1.0, -1.0) for n in pathology) else 1.0
    return labels


def _negations(types: set[str], rng: np.random.Generator) -> tuple[list[Sentence], list[Sentence]]:
    """Negated common findings, split into (lung/pleural, heart/mediastinum) sentences."""
    lung: list[Sentence] = []
    heart: list[Sentence] = []
    no_cons = "consolidation" not in types
    no_eff, no_ptx = "pleural_effusion" not in types, "pneumothorax" not in types
    if no_cons and no_eff and no_ptx and rng.random() < 0.35:
        lung.append(Sentence(pick(rng, ["There is no focal consolidation, pleural effusion or pneumothorax.",
                                        "No focal consolidation, pleural effusion, or pneumothorax is seen."]),
                             {"Consolidation": 0.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0}))
    else:
        if no_cons:
            lung.append(Sentence(pick(rng, ["No focal consolidation.", "There is no focal consolidation.",
                                            "The lungs are clear without focal consolidation."]), {"Consolidation": 0.0}))
        if no_eff and no_ptx:
            lung.append(Sentence(pick(rng, ["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
                                            "No pneumothorax or pleural effusion is seen.", "There is no effusion or pneumothorax."]),
                                 {"Pleural Effusion": 0.0, "Pneumothorax": 0.0}))
        elif no_eff:
            lung.append(Sentence(pick(rng, ["No pleural effusion.", "There is no pleural effusion."]), {"Pleural Effusion": 0.0}))
        elif no_ptx:
            lung.append(Sentence(pick(rng, ["No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."]),
                                 {"Pneumothorax": 0.0}))
    if "edema" not in types and rng.random() < 0.45:
        lung.append(Sentence(pick(rng, ["No pulmonary edema.", "There is no pulmonary edema.",
                                        "No evidence of pulmonary edema."]), {"Edema": 0.0}))
    if no_cons and rng.random() < 0.15:
        lung.append(Sentence("No evidence of pneumonia.", {"Pneumonia": 0.0}))
    if not ({"nodule", "mass"} & types) and rng.random() < 0.08:
        lung.append(Sentence("No pulmonary nodules are seen.", {"Lung Lesion": 0.0}))
    if "cardiomegaly" in types:
        if rng.random() < 0.5:
            heart.append(Sentence("The mediastinal contours are unremarkable.", {"Enlarged Cardiomediastinum": 0.0}))
    else:
        r = rng.random()
        if r < 0.3:
            heart.append(Sentence("Heart size and mediastinal contours are normal.",
                                  {"Cardiomegaly": 0.0, "Enlarged Cardiomediastinum": 0.0}))
        elif r < 0.65:
            heart.append(Sentence(pick(rng, ["Heart size is normal.", "The heart is normal in size.", "Normal heart size."]),
                                  {"Cardiomegaly": 0.0}))
            if rng.random() < 0.6:
                heart.append(Sentence(pick(rng, ["The cardiomediastinal silhouette is within normal limits.",
                                                 "Mediastinal and hilar contours are unremarkable."]),
                                      {"Enlarged Cardiomediastinum": 0.0}))
        else:
            heart.append(Sentence(pick(rng, ["The cardiomediastinal silhouette is within normal limits.",
                                             "The cardiomediastinal silhouette is normal."]),
                                  {"Enlarged Cardiomediastinum": 0.0}))
    return lung, heart


_LUNG_ORDER = ("consolidation", "atelectasis", "edema", "nodule", "mass")
_PLEURAL_ORDER = ("pleural_effusion", "pneumothorax")


def write_report(findings: list[Finding], rng: np.random.Generator, *, exam: str, views: tuple[str, ...],
                 sex: str, has_prior: bool) -> Report:
    """The report of a study with ``findings`` (see the module docstring)."""
    mentions = [mention(f, rng) for f in findings]
    lung_neg, heart_neg = _negations({f.type for f in findings}, rng)

    def sentences_of(kinds: tuple[str, ...]) -> list[Sentence]:
        return [s for f, m in zip(findings, mentions) if f.type in kinds for s in m.findings]

    body: list[Sentence] = []
    body += sentences_of(("support_device",))
    lung_findings = sentences_of(_LUNG_ORDER)
    if not lung_findings and rng.random() < 0.4:
        body.append(Sentence(pick(rng, ["The lungs are clear.", "The lungs are well expanded and clear."])))
    if "AP" in views and rng.random() < 0.3:
        body.append(Sentence("Lung volumes are low."))
    body += lung_findings + sentences_of(_PLEURAL_ORDER) + lung_neg
    body += sentences_of(("cardiomegaly",)) + heart_neg
    if rng.random() < 0.25:
        body.append(Sentence(pick(rng, ["No acute osseous abnormality.", "Bony structures are intact.",
                                        "Degenerative changes are noted in the thoracic spine.",
                                        "The upper abdomen is unremarkable."])))

    positives = [(f, m) for f, m in zip(findings, mentions) if f.type != "support_device"]
    # one impression item per finding (a hedge or a recommendation stays with its finding)
    impression: list[Sentence] = [_join(m.impression) for _, m in positives]
    if not impression:
        impression = [Sentence(pick(rng, ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                                          "No acute intrathoracic process.", "Normal chest radiograph."]))]
    if rng.random() < 0.3:
        impression += [s for f, m in zip(findings, mentions) if f.type == "support_device" for s in m.impression]

    style = rng.random()
    has_findings, header = True, "IMPRESSION"
    if style < 0.08:  # impression only: it carries the full description
        has_findings = False
        impression = body
    elif style < 0.12:
        header = None
    elif style < 0.24:
        header = "CONCLUSION"
    numbered = has_findings and len(impression) >= 2 and rng.random() < 0.5

    icu = any(f.type == "support_device" for f in findings) or "AP" in views
    reason = pick(rng, _REASONS_ICU if icu and rng.random() < 0.6 else _REASONS)
    who = "man" if sex == "M" else "woman"
    indication_header = "INDICATION" if rng.random() < 0.85 else "HISTORY"
    indication = pick(rng, [f"___-year-old {who} with {reason}.", f"___ with {reason}.",
                            f"___{sex} with {reason}"])
    technique = _technique(views, rng)
    comparison = pick(rng, ["___.", "Chest radiograph from ___.", "Prior study from ___."]) if has_prior else "None."
    addendum = None
    if rng.random() < 0.03:
        addendum = pick(rng, ["Findings were discussed with Dr. ___ by telephone at ___ on ___.",
                              "The findings were communicated to the referring team at ___ on ___.",
                              "Comparison with the prior study from ___ was made after the initial read."])
    parts = ReportParts(exam=exam, indication_header=indication_header, indication=indication,
                        technique=technique, comparison=comparison, findings=tuple(body),
                        impression=tuple(impression), impression_header=header, has_findings=has_findings,
                        numbered=numbered, sentence_gap=" " if rng.random() < 0.6 else "  ", addendum=addendum)
    included = (list(body) if has_findings else []) + (list(impression) if header else [])
    phrases = {}
    for i, (f, m) in enumerate(zip(findings, mentions)):
        if f.type != "support_device" and f.certainty == "definite":
            phrases[i] = m.phrase
    return Report(text=layout(parts), labels=aggregate_labels(included), phrases=phrases, parts=parts)


def _join(sentences: tuple[Sentence, ...]) -> Sentence:
    labels: dict[str, float] = {}
    for s in sentences:
        labels.update(s.labels)  # a finding's sentences never give one observation two values
    return Sentence(" ".join(s.text for s in sentences), labels)


def _technique(views: tuple[str, ...], rng: np.random.Generator) -> str:
    frontal = [v for v in views if v in ("PA", "AP")]
    lateral = [v for v in views if v in ("LATERAL", "LL")]
    if frontal and lateral:
        return pick(rng, [f"Chest {frontal[0]} and lateral.", f"{frontal[0]} and lateral views of the chest."])
    if frontal and frontal[0] == "AP":
        return pick(rng, ["Portable AP chest radiograph.", "Single portable AP view of the chest."])
    if frontal:
        return "Single PA view of the chest."
    return "Single lateral view of the chest."


def without_headers(report: Report) -> str:
    """The report laid out without FINDINGS / IMPRESSION headers (a fault)."""
    return layout(report.parts, headers=False)

