"""The evaluation tables made next to the study shards: MS-CXR phrase grounding and the
CheXpert 5x200 class-retrieval set. Their images are processed exactly like a study's
frontal image; boxes stay in original pixels (see :mod:`limitr.data.schema`).

Bad rows are skipped and named like studies are (``image_missing``, ``image_truncated``,
``no_valid_box``, ``no_positive_class``, ...); a box whose CSV image size differs from the
file's (a downscaled root) is rescaled to the file's pixels and named ``boxes_rescaled``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from limitr.data.images import MAX_PIXELS, BadImage, process_image_file
from limitr.data.mimic import ReportSource, UnreadableReport, image_path, plain_file_name, read_csv
from limitr.data.reports import clean_text, decode_report, parse_report
from limitr.data.schema import CHEXPERT_LABELS, CLASS_RETRIEVAL_CLASSES
from limitr.errors import LimitrError

_IDS_IN_PATH = re.compile(r"p(\d+)/s(\d+)/([^/]+?)\.\w+$")
GROUNDING_COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h")


@dataclass(frozen=True)
class Outcome:
    """A worker's answer for one unit: a row, or why there is none, and what was degraded."""

    key: int
    row: Optional[dict[str, Any]]
    skipped: Optional[str] = None
    degraded: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroundingTask:
    """One MS-CXR phrase (several CSV rows) and the image it is drawn on."""

    phrase_id: int
    dicom_id: str
    subject_id: Optional[int]
    study_id: Optional[int]
    category_name: str
    label_text: str
    path: str  # relative to the MIMIC-CXR-JPG root, as MS-CXR gives it
    boxes: tuple[tuple[float, float, float, float], ...]  # x, y, w, h in CSV pixels
    csv_size: Optional[tuple[float, float]]  # image_width, image_height of the CSV
    degraded: tuple[str, ...] = ()
    skip: Optional[str] = None


@dataclass(frozen=True)
class ClassItemTask:
    """One image of the 5x200 table."""

    item_id: int
    path: str  # as the CSV gives it
    resolved: Path
    dicom_id: Optional[str]
    subject_id: Optional[int]
    study_id: Optional[int]
    class_name: Optional[str]
    labels: tuple[Optional[float], ...]
    impression: Optional[str]
    skip: Optional[str] = None


def _ids_from_path(path: str) -> tuple[Optional[int], Optional[int], Optional[str]]:
    match = _IDS_IN_PATH.search(path.replace("\\", "/"))
    if not match:
        return None, None, None
    return int(match.group(1)), int(match.group(2)), match.group(3)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_report_text(reports: ReportSource, subject_id: int, study_id: int
                     ) -> tuple[Optional[str], Optional[str], list[str]]:
    """``(text, skip_reason, degraded)`` for one study's report file."""
    try:
        data = reports.read(subject_id, study_id)
    except UnreadableReport:
        return None, "report_unreadable", []
    if data is None:
        return None, "report_missing", []
    text, was_utf8 = decode_report(data)
    if not text.strip():
        return None, "report_empty", []
    return text, None, ([] if was_utf8 else ["report_not_utf8"])


def plan_grounding(csv: Path, root: Path, ids_of: dict[str, tuple[int, int]]) -> list[GroundingTask]:
    """One task per (dicom_id, label_text) of the MS-CXR CSV, in order of first appearance."""
    if not csv.is_file():
        raise LimitrError(f"MS-CXR file {csv} does not exist (set preprocess.ms_cxr to null to go without)")
    frame = read_csv(csv, GROUNDING_COLUMNS)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(frame["dicom_id"].fillna(""), frame["label_text"].fillna(""))):
        groups.setdefault((key[0].strip(), key[1]), []).append(i)
    has_size = "image_width" in frame.columns and "image_height" in frame.columns
    tasks = []
    for phrase_id, ((dicom_id, label_text), rows) in enumerate(groups.items()):
        first = frame.iloc[rows[0]]
        path = str(first["path"]) if isinstance(first["path"], str) else ""
        subject_id, study_id = ids_of.get(dicom_id, (None, None))
        if subject_id is None:
            subject_id, study_id, _ = _ids_from_path(path)
        boxes, degraded = [], []
        for r in rows:
            x, y, w, h = (_number(frame.iloc[r][c]) for c in ("x", "y", "w", "h"))
            if np.isfinite([x, y, w, h]).all() and w > 0 and h > 0:
                boxes.append((x, y, w, h))
            else:
                degraded.append("box_invalid")
        size = None
        if has_size:
            width, height = _number(first["image_width"]), _number(first["image_height"])
            size = (width, height) if np.isfinite([width, height]).all() and width > 0 and height > 0 else None
        skip = None
        if not dicom_id:
            skip = "dicom_id_missing"
        elif not plain_file_name(dicom_id):
            skip = "bad_dicom_id"
        elif path and not _inside(path):
            skip = "bad_path"
        elif not clean_text(label_text):
            skip = "phrase_empty"
        elif not boxes:
            skip = "no_valid_box"
        elif not path and subject_id is None:
            skip = "image_path_missing"
        tasks.append(GroundingTask(
            phrase_id=phrase_id, dicom_id=dicom_id, subject_id=subject_id, study_id=study_id,
            category_name=str(first["category_name"]) if isinstance(first["category_name"], str) else "",
            label_text=label_text, path=path, boxes=tuple(boxes), csv_size=size,
            degraded=tuple(sorted(set(degraded))), skip=skip,
        ))
    return tasks


def _inside(path: str) -> bool:
    """Whether a path from a CSV stays inside the folder it is joined to (no ``..`` part)."""
    return ".." not in Path(path.replace("\\", "/")).parts


def process_grounding(task: GroundingTask, root: Path, image_size: int,
                      max_pixels: Optional[int] = MAX_PIXELS) -> Outcome:
    """One phrase -> its grounding row."""
    if task.skip:
        return Outcome(task.phrase_id, None, task.skip)
    if task.path:
        path = Path(root) / task.path.lstrip("/")
    else:
        assert task.subject_id is not None and task.study_id is not None
        path = image_path(root, task.subject_id, task.study_id, task.dicom_id)
    try:
        png, geometry = process_image_file(path, image_size, max_pixels=max_pixels)
    except BadImage as exc:
        return Outcome(task.phrase_id, None, f"image_{exc.reason}")
    degraded = set(task.degraded)
    boxes = [list(b) for b in task.boxes]
    if task.csv_size is not None and task.csv_size != (geometry.orig_width, geometry.orig_height):
        sx, sy = geometry.orig_width / task.csv_size[0], geometry.orig_height / task.csv_size[1]
        boxes = [[x * sx, y * sy, w * sx, h * sy] for x, y, w, h in boxes]
        degraded.add("boxes_rescaled")
    row = {
        "phrase_id": task.phrase_id, "dicom_id": task.dicom_id,
        "subject_id": task.subject_id, "study_id": task.study_id,
        "category_name": task.category_name, "label_text": task.label_text,
        "text": clean_text(task.label_text), "boxes": boxes, "image": png, **geometry.columns(""),
    }
    return Outcome(task.phrase_id, row, None, tuple(sorted(degraded)))


def _resolve(path: str, csv: Path, root: Path) -> Path:
    given = Path(path)
    if given.is_absolute():
        return given
    candidates = [root / path, csv.parent / path, root.parent / path]
    return next((c for c in candidates if c.exists()), candidates[0])


def plan_class_items(csv: Path, root: Path, ids_of: dict[str, tuple[int, int]]) -> list[ClassItemTask]:
    """One task per row of the 5x200 CSV (``Path``, the label columns, optionally
    ``Report Impression``); ``Path`` is resolved against the root, then the CSV's folder."""
    if not csv.is_file():
        raise LimitrError(
            f"class-retrieval file {csv} does not exist (set preprocess.class_retrieval to null to go without)")
    frame = read_csv(csv, ("Path", *CLASS_RETRIEVAL_CLASSES))
    labels = pd.DataFrame({
        name: pd.to_numeric(frame[name].str.strip(), errors="coerce") if name in frame.columns
        else np.nan for name in CHEXPERT_LABELS
    }, index=frame.index)
    labels = labels.where(labels.isin([1.0, 0.0, -1.0]))
    impressions = frame["Report Impression"] if "Report Impression" in frame.columns else None
    tasks = []
    for item_id, (path, values) in enumerate(zip(frame["Path"].fillna(""), labels.to_numpy())):
        row_labels = tuple(None if np.isnan(v) else float(v) for v in values)
        by_name = dict(zip(CHEXPERT_LABELS, row_labels))
        positive = [c for c in CLASS_RETRIEVAL_CLASSES if by_name[c] == 1.0]
        subject_id, study_id, stem = _ids_from_path(path)
        dicom_id = stem if stem else (Path(path).stem or None)
        if dicom_id in ids_of:
            subject_id, study_id = ids_of[dicom_id]
        skip = None
        if not path.strip():
            skip = "path_missing"
        elif not _inside(path.strip()):
            skip = "bad_path"
        elif not positive:
            skip = "no_positive_class"
        elif len(positive) > 1:
            skip = "several_positive_classes"
        impression = impressions.iloc[item_id] if impressions is not None else None
        tasks.append(ClassItemTask(
            item_id=item_id, path=path, resolved=_resolve(path.strip(), csv, root),
            dicom_id=dicom_id, subject_id=subject_id, study_id=study_id,
            class_name=positive[0] if len(positive) == 1 else None, labels=row_labels,
            impression=impression if isinstance(impression, str) else None, skip=skip,
        ))
    return tasks


def process_class_item(task: ClassItemTask, reports: ReportSource, image_size: int,
                       max_pixels: Optional[int] = MAX_PIXELS) -> Outcome:
    """One 5x200 image -> its row; its text from ``Report Impression`` or the study's report."""
    if task.skip:
        return Outcome(task.item_id, None, task.skip)
    try:
        png, geometry = process_image_file(task.resolved, image_size, max_pixels=max_pixels)
    except BadImage as exc:
        return Outcome(task.item_id, None, f"image_{exc.reason}")
    text = clean_text(task.impression) if task.impression else ""
    if not text and task.subject_id is not None and task.study_id is not None:
        raw, _, _ = read_report_text(reports, task.subject_id, task.study_id)
        text = parse_report(raw).model_text if raw is not None else ""
    row = {
        "item_id": task.item_id, "path": task.path, "dicom_id": task.dicom_id,
        "subject_id": task.subject_id, "study_id": task.study_id, "class_name": task.class_name,
        "text": text or None, "image": png, **geometry.columns(""),
        **dict(zip(CHEXPERT_LABELS, task.labels)),
    }
    return Outcome(task.item_id, row, None, () if text else ("text_missing",))
