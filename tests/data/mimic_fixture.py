"""A tiny MIMIC-CXR-JPG root written by hand for the data tests (grey JPEGs, csv.gz, zip)."""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from limitr.data.schema import CHEXPERT_LABELS

META_COLUMNS = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


def dicom_id(name: str) -> str:
    """A 44-character id like the release's: 5 groups of 8 lower-case hex digits."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:40]
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def report_text(findings: Optional[str] = "The lungs are clear.", impression: Optional[str] = "No acute process.") -> str:
    lines = ["                                 FINAL REPORT", "EXAMINATION:  CHEST (PA AND LAT)", "",
             "INDICATION:  ___ with cough.", ""]
    if findings is not None:
        lines += ["FINDINGS: ", "", findings, ""]
    if impression is not None:
        lines += ["IMPRESSION: ", "", impression]
    return "\n".join(" " + line if line else " " for line in lines) + "\n"


def grey_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A textured grey JPEG (smooth field + noise), so resizing has something to average."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    field_ = 128 + 60 * np.sin(x / (7 + seed % 5)) * np.cos(y / 11.0)
    pixels = np.clip(field_ + rng.normal(0, 10, (height, width)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Img:
    view: str  # ViewPosition as written ("" for empty)
    date: str = "21800101"
    time: str = "101010.000"
    size: tuple[int, int] = (90, 110)  # width, height
    content: Optional[bytes] = None  # None: a fresh JPEG; b"": zero bytes
    write: bool = True  # False: the file is missing
    name: str = ""
    meaning: Optional[str] = None  # ViewCodeSequence_CodeMeaning (default from the view)


@dataclass
class Study:
    subject_id: int
    study_id: int
    images: list[Img]
    split: Optional[str] = "train"  # None: absent from the split file
    report: Optional[bytes] = field(default_factory=lambda: report_text().encode())  # None: no file
    labels: Optional[dict[str, str]] = field(default_factory=dict)  # None: absent from chexpert


def _gz_csv(path: Path, header: str, rows: list[list[str]]) -> None:
    text = header + "\n" + "".join(",".join(r) + "\n" for r in rows)
    with gzip.open(path, "wt", newline="") as fh:
        fh.write(text)


def write_root(base: Path, studies: list[Study], extracted_reports: bool = False) -> tuple[Path, Path]:
    """Write ``base/mimic-cxr-jpg`` and the reports (zip, or a folder); returns both paths."""
    root = base / "mimic-cxr-jpg"
    (root / "files").mkdir(parents=True, exist_ok=True)
    meta, split, chexpert = [], [], []
    reports: dict[str, bytes] = {}
    for s_i, study in enumerate(studies):
        subject = f"{study.subject_id:08d}"
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study.study_id:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i_i, img in enumerate(study.images):
            did = img.name or dicom_id(f"{study.study_id}-{i_i}")
            img.name = did
            if img.write:
                data = img.content if img.content is not None else grey_jpeg(*img.size, seed=s_i * 10 + i_i)
                (folder / f"{did}.jpg").write_bytes(data)
            meaning = img.meaning if img.meaning is not None else _MEANING.get(img.view, "")
            meta.append([did, str(study.subject_id), str(study.study_id), "CHEST (PA AND LAT)", img.view,
                         str(img.size[1]), str(img.size[0]), img.date, img.time, "CHEST (PA AND LAT)",
                         meaning, "Erect"])
            if study.split is not None:
                split.append([did, str(study.study_id), str(study.subject_id), study.split])
        if study.labels is not None:
            chexpert.append([str(study.subject_id), str(study.study_id),
                             *(study.labels.get(name, "") for name in CHEXPERT_LABELS)])
        if study.report is not None:
            reports[f"files/p{subject[:2]}/p{subject}/s{study.study_id:08d}.txt"] = study.report
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", META_COLUMNS, meta)
    _gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split", split)
    label_header = "subject_id,study_id," + ",".join(CHEXPERT_LABELS)
    _gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", label_header, chexpert)
    _gz_csv(root / "mimic-cxr-2.0.0-negbio.csv.gz", label_header, chexpert)
    if extracted_reports:
        folder = base / "mimic-cxr-reports"
        for name, data in sorted(reports.items()):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return root, folder
    zip_path = base / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(reports.items()):
            zf.writestr(name, data)
    return root, zip_path


def chest_like(width: int, height: int, seed: int, noise: float = 6.0) -> np.ndarray:
    """A grey chest-like picture (uint8, height x width): bright mediastinum and borders, two
    darker lung fields crossed by ribs, fine grain. Structure at the scales of a radiograph,
    not a flat colour and not a test pattern."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width - 0.5, y / height - 0.5
    body = 170 - 60 * np.exp(-(((np.abs(u) - 0.2) / 0.14) ** 2 + ((v + 0.02) / 0.3) ** 2) ** 1.5)
    ribs = 12 * np.sin(2 * np.pi * (v * 11 + 0.8 * u**2 * 4)) * (np.abs(u) > 0.05)
    pixels = body + ribs + rng.normal(0, noise, (height, width)).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def chest_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(chest_like(width, height, seed), mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
