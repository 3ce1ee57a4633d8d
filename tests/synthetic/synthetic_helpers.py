"""Plain, slow readers the synthetic-data tests check the generator against: a keyword
CheXpert labeller, a section splitter and file helpers. Written independently of the
generator's own code so that a wrong label or a wrong layout shows."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Optional

from limitr.data.schema import CHEXPERT_LABELS

#: Words that mention each observation (lower case; matched as substrings or whole words).
KEYWORDS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelecta",),
    "Cardiomegaly": ("cardiomegaly", "heart", "cardiac silhouette"),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Enlarged Cardiomediastinum": ("cardiomediastinal", "mediastinal"),
    "Fracture": ("fracture",),
    "Lung Lesion": ("nodule", "mass"),
    "Lung Opacity": ("opacit",),
    "Pleural Effusion": ("effusion",),
    "Pleural Other": ("pleural thickening", "pleural plaque"),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothora",),
    "Support Devices": ("tube", "catheter", "pacemaker", "pacer", "central line", "picc"),
}
HEDGES = re.compile(r"\b(possible|possibly|may|might|could|cannot be excluded|likely|suspect\w*|concerning for|versus)\b")
NEGATIONS = re.compile(r"\b(no|not|without|normal|unremarkable|within normal limits|negative|clear of)\b")
HEADER = re.compile(r"^ ([A-Z][A-Z ()/,-]*):", re.MULTILINE)


def sections(text: str) -> dict[str, str]:
    """Block sections of a report by upper-case header (text after the last underscore
    separator line only)."""
    text = re.split(r"^ _{20,}$", text, flags=re.MULTILINE)[-1]
    found: dict[str, str] = {}
    matches = list(HEADER.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        found[m.group(1)] = text[m.end():end]
    return found


def model_text(text: str) -> str:
    """FINDINGS then IMPRESSION (or CONCLUSION), whitespace collapsed."""
    parts = sections(text)
    body = " ".join(parts.get(k, "") for k in ("FINDINGS", "IMPRESSION", "CONCLUSION"))
    return re.sub(r"\s+", " ", body).strip()


def keyword_labels(text: str) -> dict[str, Optional[float]]:
    """A slow CheXpert-like labeller: per sentence, a mentioned observation is uncertain
    with a hedge cue, negative with a negation cue, else positive; per report positive
    beats uncertain beats negative. No Finding as CheXpert defines it."""
    values: dict[str, set[float]] = {}
    for sentence in re.split(r"(?<=[.])\s+|\s+\d+\.\s+", model_text(text).lower()):
        for name, words in KEYWORDS.items():
            if not any(w in sentence for w in words):
                continue
            value = -1.0 if HEDGES.search(sentence) else 0.0 if NEGATIONS.search(sentence) else 1.0
            values.setdefault(name, set()).add(value)
    labels: dict[str, Optional[float]] = {}
    for name in CHEXPERT_LABELS:
        v = values.get(name, set())
        labels[name] = 1.0 if 1.0 in v else -1.0 if -1.0 in v else 0.0 if 0.0 in v else None
    pathology = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    labels["No Finding"] = None if any(labels[n] in (1.0, -1.0) for n in pathology) else 1.0
    return labels


def report_member(subject_id: int, study_id: int) -> str:
    s = f"{subject_id:08d}"
    return f"files/p{s[:2]}/p{s}/s{study_id:08d}.txt"


def read_reports(root: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(root / "mimic-cxr-reports.zip") as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def image_file(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    s = f"{subject_id:08d}"
    return root / "mimic-cxr-jpg" / "files" / f"p{s[:2]}" / f"p{s}" / f"s{study_id:08d}" / f"{dicom_id}.jpg"


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
