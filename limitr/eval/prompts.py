"""The text queries of class retrieval and zero-shot classification.

Written in the language of MIMIC-CXR reports (and of the synthetic reports, which follow it,
see limitr/synthetic/phrases.py and reports.py): lower case, findings named as
radiologists write them, with side, size and zone words; the negative prompts are the
negations and normal sentences such reports use (reports never state that a device is
absent, so the device negatives are normal-study sentences). A class's score for an image is the mean of
its prompts' scores, so that no single wording decides.
"""

from __future__ import annotations

from typing import Mapping


#: Text-to-image queries of the 5x200 class retrieval, per class.
CLASS_PROMPTS: Mapping[str, tuple[str, ...]] = {
    "Atelectasis": (
        "there is bibasilar atelectasis",
        "there is left basilar atelectasis",
        "there is right basilar atelectasis",
        "retrocardiac atelectasis",
    ),
    "Cardiomegaly": (
        "mild cardiomegaly",
        "moderate cardiomegaly",
        "severe cardiomegaly",
        "the heart is moderately enlarged",
    ),
    "Consolidation": (
        "focal consolidation in the right lower lobe",
        "left lower lobe consolidation",
        "right upper lobe consolidation",
        "lingular consolidation",
    ),
    "Edema": (
        "mild pulmonary edema",
        "moderate interstitial edema",
        "severe pulmonary edema",
        "findings are consistent with moderate pulmonary edema",
    ),
    "Pleural Effusion": (
        "there is a small left pleural effusion",
        "there is a moderate right pleural effusion",
        "small bilateral pleural effusions",
        "large left-sided pleural effusion",
    ),
}

#: The usual negations of a normal report.
_NORMAL = (
    "no pleural effusion or pneumothorax",
    "no focal consolidation",
    "heart size is normal",
    "the cardiomediastinal silhouette is within normal limits",
    "the lungs are clear",
)

#: Zero-shot classification: (positive prompts, negative prompts) per CheXpert observation.
ZERO_SHOT_PROMPTS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Atelectasis": (CLASS_PROMPTS["Atelectasis"], ("the lungs are clear", "the lungs are well expanded and clear")),
    "Cardiomegaly": (CLASS_PROMPTS["Cardiomegaly"], _NORMAL[2:4]),
    "Consolidation": (CLASS_PROMPTS["Consolidation"], ("no focal consolidation", "the lungs are clear")),
    "Edema": (CLASS_PROMPTS["Edema"], ("no pulmonary edema", "no evidence of pulmonary edema")),
    "Pleural Effusion": (CLASS_PROMPTS["Pleural Effusion"], ("no pleural effusion", "no pleural effusion or pneumothorax")),
    "Pneumothorax": (
        ("small left apical pneumothorax", "moderate right pneumothorax", "large left-sided pneumothorax"),
        ("no pneumothorax", "no pleural effusion or pneumothorax"),
    ),
    "Pneumonia": (
        ("right lower lobe pneumonia", "pneumonia in the left lower lobe", "findings are consistent with lingular pneumonia"),
        ("no evidence of pneumonia", "the lungs are clear"),
    ),
    "Lung Lesion": (
        ("8 mm nodule in the right upper lung", "3 cm mass in the left lower lung", "left mid lung nodule"),
        ("no pulmonary nodules are seen", "the lungs are clear"),
    ),
    "Lung Opacity": (
        ("patchy opacity in the right lower lobe", "focal left lung base opacity", "patchy opacity in the right mid lung"),
        ("no focal consolidation", "the lungs are clear"),
    ),
    "Support Devices": (
        (
            "endotracheal tube terminates 4 cm above the carina",
            "left chest wall dual-chamber pacemaker is in place",
            "right internal jugular central venous catheter terminates in the mid svc",
            "nasogastric tube terminates in the stomach",
        ),
        ("no acute cardiopulmonary process", "the lungs are clear"),
    ),
    "No Finding": (
        ("no acute cardiopulmonary process", *_NORMAL),
        ("moderate cardiomegaly", "there is a small left pleural effusion", "focal consolidation in the right lower lobe"),
    ),
}


#: Ground-truth probes of the synthetic data (:mod:`limitr.eval.probes`): where a finding is.
#: One wording per (finding type, side, zone); the side and zone words are the only
#: difference between the prompts a probe compares.
_ZONE_WORDS = {"upper": "upper", "middle": "mid", "lower": "lower", "basal": "lower"}


def probe_prompt(kind: str, side: str, zone: str | None = None) -> str:
    """The probe query for a finding of type ``kind`` on ``side`` (left | right) in ``zone``."""
    if kind == "pleural_effusion":
        return f"{side} pleural effusion"
    if kind == "pneumothorax":
        return f"{side} pneumothorax"
    if kind == "atelectasis":
        return f"{side} basilar atelectasis"
    if kind == "consolidation":
        return f"consolidation in the {side} {_ZONE_WORDS[zone or 'lower']} lung"
    if kind in ("nodule", "mass"):
        return f"{side} {_ZONE_WORDS[zone or 'middle']} lung {kind}"
    raise ValueError(f"no probe wording for finding type {kind!r}")


#: The finding types of the side probe, and those of the zone probe (upper against lower).
SIDE_PROBE_TYPES: tuple[str, ...] = ("pleural_effusion", "pneumothorax", "atelectasis", "consolidation", "nodule", "mass")
ZONE_PROBE_TYPES: tuple[str, ...] = ("consolidation", "nodule", "mass")

#: Effusion detection by size: a small effusion barely shows on the frontal view and blunts
#: the lateral's posterior costophrenic angle (as the synthetic renderer draws it), so this
#: probe is where the lateral view should matter.
EFFUSION_PROMPTS: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("small pleural effusion", "small left pleural effusion", "small right pleural effusion"),
    ("no pleural effusion", "no pleural effusion or pneumothorax"),
)


def probe_prompts() -> list[str]:
    """Every probe query, in a fixed order."""
    seen: dict[str, None] = {}
    for kind in SIDE_PROBE_TYPES:
        for side in ("left", "right"):
            for zone in ("upper", "middle", "lower"):
                seen[probe_prompt(kind, side, zone)] = None
    for texts in EFFUSION_PROMPTS:
        seen.update(dict.fromkeys(texts))
    return list(seen)


def all_prompts() -> list[str]:
    """Every distinct prompt text, in a fixed order (class prompts, zero-shot, then probes)."""
    seen: dict[str, None] = {}
    for texts in CLASS_PROMPTS.values():
        seen.update(dict.fromkeys(texts))
    for positive, negative in ZERO_SHOT_PROMPTS.values():
        seen.update(dict.fromkeys(positive))
        seen.update(dict.fromkeys(negative))
    seen.update(dict.fromkeys(probe_prompts()))
    return list(seen)


def tokenize_prompts(tokenizer_dir: str, prompts: list[str], max_length: int) -> dict:
    """Tokenise prompts exactly as the tokenize stage tokenises reports
    (:func:`limitr.text.tokenize.encode_texts` with the saved tokenizer; word ids 0-based,
    -1 for [CLS], [SEP] and padding).

    Returns {"input_ids", "attention_mask", "word_ids"}: (P, max_length) int64 tensors.
    """
    import torch

    from limitr.text.tokenize import encode_texts
    from limitr.text.tokenizer import load_tokenizer

    enc = encode_texts(load_tokenizer(tokenizer_dir), prompts, max_length)
    return {
        "input_ids": torch.from_numpy(enc.input_ids.astype("int64")),
        "attention_mask": torch.from_numpy(enc.attention_mask.astype("int64")),
        "word_ids": torch.from_numpy(enc.word_ids.astype("int64")),
    }
