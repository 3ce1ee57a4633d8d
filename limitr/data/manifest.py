"""A group's own archive as a source: a CSV manifest with one row per image.

Columns (their names are settings, ``preprocess.manifest_columns``; defaults in brackets):
study id [``study_id``], patient id [``patient_id``], image path relative to the images root
[``path``], view [``view``], report text [``report``], and optionally split [``split``:
train / validate / test; when the column is absent the split is made by patient, seeded] and
any of the 14 CheXpert observations under their own names (1, 0, -1 or empty).

Ids are whole numbers (the shards key studies by integer). Views: PA, AP, FRONTAL (frontal)
and LATERAL, LL (lateral), any case; anything else is named ``view_unknown`` and ignored. The
study's rows should carry the same report and labels; the first row's are used (the first
non-empty report), and a differing report is named ``report_differs``.

A path that is absolute or climbs out of the root (a ``..`` part) is never opened: the row is
dropped as ``bad_path``, like ``bad_study_id`` / ``bad_patient_id`` (not a whole number) and
``path_missing``; every dropped row is named by its 1-based row number under
``rows_dropped``. Studies are skipped as ``report_empty``, ``split_unknown`` (a split cell not
train / validate / test), ``lateral_only``, ``no_frontal_view_unknown``, ``bad_path`` (its only
frontal refused) or for an image reason (``frontal_image_missing``, ...).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Mapping, Optional, Sequence

from limitr.data.mimic import ImageRef, ReadyText, RowReport, StudyPlan, read_csv
from limitr.data.reports import clean_text
from limitr.data.schema import CHEXPERT_LABELS
from limitr.data.sources import SourcePlan, check_splits, label_value, patient_splits
from limitr.errors import LimitrError

#: The manifest's columns by role, as named by default.
DEFAULT_COLUMNS: dict[str, str] = {
    "study": "study_id", "patient": "patient_id", "path": "path", "view": "view",
    "text": "report", "split": "split",
}
FRONTAL = ("PA", "AP", "FRONTAL")
LATERAL = ("LATERAL", "LL")


def safe_relative(path: str) -> bool:
    """Whether ``path`` is a relative path that stays inside the folder it is joined to."""
    text = path.replace("\\", "/").strip()
    if not text or text.startswith("/") or re.match(r"^[A-Za-z]:", text) or "\x00" in text:
        return False
    return ".." not in PurePosixPath(text).parts


def _id(value: object) -> Optional[int]:
    text = value.strip() if isinstance(value, str) else ""
    return int(text) if re.fullmatch(r"\d{1,18}", text) else None


def plan_manifest(csv: Path, root: Optional[Path] = None, columns: Optional[Mapping[str, str]] = None,
                  fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> SourcePlan:
    """The study plans of a manifest (see the module's text); ``root`` defaults to the
    manifest's folder."""
    csv = Path(csv)
    if not csv.is_file():
        raise LimitrError(f"manifest {csv} does not exist")
    root = Path(root) if root is not None else csv.parent
    if not root.is_dir():
        raise LimitrError(f"manifest images root {root} does not exist or is not a folder")
    names = {**DEFAULT_COLUMNS, **dict(columns or {})}
    unknown = sorted(set(names) - set(DEFAULT_COLUMNS))
    if unknown:
        raise LimitrError(f"manifest column role(s) {', '.join(unknown)} unknown; roles: {', '.join(DEFAULT_COLUMNS)}")
    required = tuple(names[k] for k in ("study", "patient", "path", "view", "text"))
    frame = read_csv(csv, required)
    has_split = names["split"] in frame.columns
    label_columns = [c for c in CHEXPERT_LABELS if c in frame.columns]
    rows = RowReport(read=len(frame))
    studies: dict[int, dict] = {}
    for i in range(len(frame)):
        row = frame.iloc[i]
        label = f"row {i + 1}"
        study, patient = _id(row[names["study"]]), _id(row[names["patient"]])
        path = row[names["path"]] if isinstance(row[names["path"]], str) else ""
        if study is None:
            rows.drop("bad_study_id", [label])
            continue
        if patient is None:
            rows.drop("bad_patient_id", [label])
            continue
        entry = studies.setdefault(study, {"patient": patient, "images": [], "notes": set(), "text": None,
                                           "split": None, "split_bad": False, "labels": None})
        if patient != entry["patient"]:
            entry["notes"].add("patient_differs")
        text = row[names["text"]] if isinstance(row[names["text"]], str) else ""
        if text.strip():
            if entry["text"] is None:
                entry["text"] = text
            elif clean_text(text) != clean_text(entry["text"]):
                entry["notes"].add("report_differs")
        if has_split and entry["split"] is None and not entry["split_bad"]:
            value = check_splits(row[names["split"]]) if isinstance(row[names["split"]], str) else None
            entry["split"], entry["split_bad"] = value, value is None
        if entry["labels"] is None:
            values = [label_value(row[c]) if c in label_columns else (None, True) for c in CHEXPERT_LABELS]
            entry["labels"] = tuple(v for v, _ in values)
            if not all(ok for _, ok in values):
                entry["notes"].add("label_invalid")
        if not path.strip():
            rows.drop("path_missing", [label])
            continue
        if not safe_relative(path):
            rows.drop("bad_path", [label])
            entry["notes"].add("bad_path")
            continue
        view = str(row[names["view"]]).strip().upper() if isinstance(row[names["view"]], str) else ""
        if view in FRONTAL:
            kind = "FRONTAL"
        elif view in LATERAL:
            kind = "LATERAL"
        else:
            kind = ""
            entry["notes"].add("view_unknown")
        if kind:
            entry["images"].append(ImageRef(path.strip(), view, float(i), 0.0,
                                            str(root / path.strip().replace("\\", "/"))))
    rows.used = rows.read - sum(len(v) for v in rows.dropped.values())
    if not studies:
        raise LimitrError(f"manifest {csv} lists no usable image row")
    split_of = {} if has_split else patient_splits({e["patient"] for e in studies.values()}, fractions, seed)
    plans = []
    for study in sorted(studies, key=lambda s: (studies[s]["patient"], s)):
        entry = studies[study]
        notes = set(entry["notes"])
        split = entry["split"] if has_split else split_of[entry["patient"]]
        refs = entry["images"]
        # frontal: PA before AP before FRONTAL, then row order; lateral: LATERAL before LL
        frontals = tuple(sorted((r for r in refs if r.view in FRONTAL),
                                key=lambda r: (FRONTAL.index(r.view), r.study_date)))
        laterals = tuple(sorted((r for r in refs if r.view in LATERAL),
                                key=lambda r: (LATERAL.index(r.view), r.study_date)))
        text = clean_text(entry["text"] or "")
        labels = entry["labels"] or (None,) * len(CHEXPERT_LABELS)
        if not label_columns:
            notes.add("labels_missing")
        skip = None
        if split is None:
            skip = "split_unknown"
        elif not text:
            skip = "report_empty"
        elif not frontals:
            skip = ("bad_path" if "bad_path" in notes else "lateral_only" if laterals
                    else "no_frontal_view_unknown")
        plans.append(StudyPlan(
            subject_id=entry["patient"], study_id=study, split=split, frontals=frontals, laterals=laterals,
            labels=labels, degraded=tuple(sorted(notes)), skip=skip,
            report=ReadyText(text, "report") if text else None))
    splits_of: dict[int, set] = {}
    for p in plans:
        if p.split is not None:
            splits_of.setdefault(p.subject_id, set()).add(p.split)
    info = {"name": "manifest", "manifest": str(csv), "images_root": str(root),
            "split_source": "manifest" if has_split else "seeded_by_patient",
            "label_columns": label_columns,
            # a manifest's own split that puts a patient in two splits leaks between them
            "patients_in_several_splits": sorted(k for k, v in splits_of.items() if len(v) > 1)}
    return SourcePlan(plans, rows, info, [(p.subject_id, p.study_id, p.split) for p in plans if p.split])
