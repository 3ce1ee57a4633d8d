"""What every source other than MIMIC-CXR shares: the plan a reader hands to preprocess, the
seeded patient-level split, the class-retrieval table built from the test split, and the
``XXXX`` placeholders of de-identified reports.

A reader (:mod:`limitr.data.iu`, :mod:`limitr.data.manifest`) turns its files into the same
:class:`~limitr.data.mimic.StudyPlan` records the MIMIC-CXR reader makes, with the image
paths resolved (``ImageRef.path``) and the report text ready (``StudyPlan.report``), so that
decoding, the shards, the tables and report.json are one code path for every source.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from limitr.data.mimic import ImageRef, RowReport, StudyPlan
from limitr.data.schema import CHEXPERT_LABELS, CLASS_RETRIEVAL_CLASSES, SPLITS
from limitr.data.tables import ClassItemTask
from limitr.errors import LimitrError

#: De-identified words in IU reports: ``XXXX`` (two or more capital X as a whole word).
_PLACEHOLDER = re.compile(r"\bX{2,}\b")
#: Images per class of the class-retrieval table (the 5x200 protocol).
CLASS_ITEMS_PER_CLASS = 200


@dataclass
class SourcePlan:
    """A reader's answer: one plan per study (sorted by subject, study), the account of the
    index rows, and what report.json says about the source under ``source``."""

    studies: list[StudyPlan]
    rows: RowReport
    info: dict[str, Any] = field(default_factory=dict)
    #: (patient_id, study_id, split) of every study that has a split: written as split.csv
    split_rows: list[tuple[int, int, str]] = field(default_factory=list)


def remove_placeholders(text: str) -> tuple[str, int]:
    """``text`` without its ``XXXX`` placeholders, and how many there were."""
    cleaned, n = _PLACEHOLDER.subn(" ", text)
    return cleaned, n


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """(train, validate, test) shares: three numbers >= 0 that add up to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise LimitrError(f"split fractions must be three shares >= 0 (train, validate, test) adding up to 1, "
                          f"got {list(fractions)}")
    return values  # type: ignore[return-value]


def patient_splits(patients: Iterable[int], fractions: Sequence[float], seed: int) -> dict[int, str]:
    """A split per patient: the sorted ids shuffled with ``seed``, then cut into train,
    validate and test by ``fractions`` (validate and test rounded, train the rest). The same
    patients, fractions and seed always give the same split."""
    train, validate, test = check_fractions(fractions)
    ids = sorted(set(int(p) for p in patients))
    order = np.random.default_rng([seed, 22]).permutation(len(ids))
    n_test = int(round(len(ids) * test))
    n_validate = min(int(round(len(ids) * validate)), len(ids) - n_test)
    split_of = {}
    for rank, index in enumerate(order.tolist()):
        name = "test" if rank < n_test else "validate" if rank < n_test + n_validate else "train"
        split_of[ids[index]] = name
    return split_of


def split_csv(rows: Sequence[tuple[int, int, str]]) -> str:
    """The split file a user can cite: ``patient_id,study_id,split``, sorted by study."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["patient_id", "study_id", "split"])
    for patient, study, split in sorted(rows, key=lambda r: (r[1], r[0])):
        writer.writerow([patient, study, split])
    return out.getvalue()


def class_items_from_test(studies: Sequence[StudyPlan], root: Path, seed: int,
                          per_class: int = CLASS_ITEMS_PER_CLASS) -> list[ClassItemTask]:
    """The 5x200 protocol on the test split, without CheXpert's CSV: per class, up to
    ``per_class`` test studies whose label for it is 1 and whose other observations (No
    Finding aside) are 0 or not mentioned, sampled with ``seed``; the image is the study's
    first frontal, the text its report."""
    rng = np.random.default_rng([seed, 5])
    tasks: list[ClassItemTask] = []
    for name in CLASS_RETRIEVAL_CLASSES:
        others = [CHEXPERT_LABELS.index(n) for n in CHEXPERT_LABELS if n not in (name, "No Finding")]
        pool = [p for p in studies
                if p.split == "test" and p.skip is None and p.frontals and p.report is not None
                and p.labels[CHEXPERT_LABELS.index(name)] == 1.0
                and all(p.labels[j] in (None, 0.0) for j in others)]
        for j in rng.permutation(len(pool))[:per_class].tolist():
            plan = pool[j]
            ref: ImageRef = plan.frontals[0]
            assert ref.path is not None and plan.report is not None
            tasks.append(ClassItemTask(
                item_id=len(tasks), path=_relative(Path(ref.path), root), resolved=Path(ref.path),
                dicom_id=ref.dicom_id, subject_id=plan.subject_id, study_id=plan.study_id,
                class_name=name, labels=tuple(0.0 if v is None and i != CHEXPERT_LABELS.index("No Finding")
                                              else v for i, v in enumerate(plan.labels)),
                impression=plan.report.text,
            ))
    return tasks


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def label_value(cell: Any) -> tuple[Optional[float], bool]:
    """A label cell as 1.0 / 0.0 / -1.0 / None (empty), and whether it was valid."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return None, True
    text = str(cell).strip()
    if not text:
        return None, True
    try:
        value = float(text)
    except ValueError:
        return None, False
    if value in (1.0, 0.0, -1.0):
        return value, True
    return None, False


def check_splits(value: str) -> Optional[str]:
    """A split cell as train / validate / test (``val`` and ``valid`` accepted), else None."""
    text = str(value).strip().lower()
    text = {"val": "validate", "valid": "validate", "validation": "validate"}.get(text, text)
    return text if text in SPLITS else None
