"""Injected faults: the kinds of damage real downloads and real releases show.

With ``fault_rate`` > 0 that share of studies gets exactly one fault each. Kinds are
dealt in turn from a seeded order, so any set with ten or more faulted studies holds
every kind. Every fault is listed in ``faults.json`` (kind, study_id, subject_id,
dicom_id where it concerns one image, and what was changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from limitr.synthetic.structure import Study

FAULT_KINDS: tuple[str, ...] = (
    "truncated_jpeg",  # the JPEG file ends early
    "zero_byte_image",  # the JPEG file is empty
    "missing_image",  # listed in the metadata, no file
    "missing_report",  # no report in the zip
    "empty_report",  # a report file of zero bytes
    "no_findings_impression",  # a report without FINDINGS and IMPRESSION headers
    "non_utf8_report",  # Windows-1252 quotes in the report bytes
    "unknown_view",  # ViewPosition names no frontal or lateral view
    "empty_view",  # ViewPosition is empty
    "missing_csv_cell",  # one cell of the metadata or split file is empty
)
IMAGE_FAULTS = frozenset({"truncated_jpeg", "zero_byte_image", "missing_image", "unknown_view", "empty_view"})
REPORT_FAULTS = frozenset({"missing_report", "empty_report", "no_findings_impression", "non_utf8_report"})
#: Rare ViewPosition values of the release that are neither frontal nor lateral.
ODD_VIEWS = ("LAO", "RAO", "LPO", "SWIMMERS", "XTABLE LATERAL", "AP AXIAL", "PA LLD")
#: (file, column) pairs a missing_csv_cell fault may empty.
CSV_CELLS = (
    ("mimic-cxr-2.0.0-metadata.csv.gz", "StudyDate"),
    ("mimic-cxr-2.0.0-metadata.csv.gz", "StudyTime"),
    ("mimic-cxr-2.0.0-metadata.csv.gz", "subject_id"),
    ("mimic-cxr-2.0.0-split.csv.gz", "split"),
)


@dataclass(frozen=True)
class Fault:
    """One injected fault. ``image_index``: the image it concerns (image, view and csv
    faults); ``keep_fraction``: how much of a truncated JPEG remains; ``file`` /
    ``column``: the emptied csv cell; ``view``: the ViewPosition written instead."""

    kind: str
    study_index: int
    image_index: Optional[int] = None
    keep_fraction: Optional[float] = None
    file: Optional[str] = None
    column: Optional[str] = None
    view: Optional[str] = None

    def record(self, study: Study) -> dict:
        """The ``faults.json`` entry."""
        out: dict = {"kind": self.kind, "study_id": study.study_id, "subject_id": study.subject_id}
        if self.image_index is not None:
            out["dicom_id"] = study.images[self.image_index].dicom_id
        if self.kind == "truncated_jpeg":
            out["keep_fraction"] = self.keep_fraction
        if self.file is not None:
            out["file"], out["column"] = self.file, self.column
        if self.kind == "unknown_view":
            out["view_position"] = self.view
        return out


def plan_faults(studies: list[Study], fault_rate: float, seed: int) -> dict[int, Fault]:
    """Which studies get which fault (study index -> fault)."""
    if fault_rate <= 0:
        return {}
    rng = np.random.default_rng([seed, 4])
    hit = rng.random(len(studies)) < fault_rate
    order = rng.permutation(len(FAULT_KINDS))
    faults: dict[int, Fault] = {}
    for j, k in enumerate(np.flatnonzero(hit).tolist()):
        kind = FAULT_KINDS[int(order[j % len(FAULT_KINDS)])]
        study = studies[k]
        image = int(rng.integers(len(study.images)))
        if kind == "truncated_jpeg":
            faults[k] = Fault(kind, k, image, keep_fraction=round(float(rng.uniform(0.3, 0.7)), 3))
        elif kind in ("zero_byte_image", "missing_image", "empty_view"):
            faults[k] = Fault(kind, k, image)
        elif kind == "unknown_view":
            faults[k] = Fault(kind, k, image, view=ODD_VIEWS[int(rng.integers(len(ODD_VIEWS)))])
        elif kind == "missing_csv_cell":
            file, column = CSV_CELLS[int(rng.integers(len(CSV_CELLS)))]
            faults[k] = Fault(kind, k, image, file=file, column=column)
        else:
            faults[k] = Fault(kind, k)
    return faults


def damage_jpeg(data: bytes, fault: Optional[Fault]) -> Optional[bytes]:
    """The bytes to write for an image with ``fault`` (None: write no file)."""
    if fault is None:
        return data
    if fault.kind == "truncated_jpeg":
        return data[: max(int(len(data) * (fault.keep_fraction or 0.5)), 16)]
    if fault.kind == "zero_byte_image":
        return b""
    if fault.kind == "missing_image":
        return None
    return data


def damage_report(text: str, headerless: str, fault: Optional[Fault]) -> Optional[bytes]:
    """The bytes of a report file with ``fault`` (None: no file); ``headerless`` is the
    same report laid out without FINDINGS / IMPRESSION headers."""
    if fault is None or fault.kind not in REPORT_FAULTS:
        return text.encode("utf-8")
    if fault.kind == "missing_report":
        return None
    if fault.kind == "empty_report":
        return b""
    if fault.kind == "no_findings_impression":
        return headerless.encode("utf-8")
    # quotes typed in a word processor: bytes 0x93 / 0x94, not valid UTF-8
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith((" INDICATION:", " HISTORY:")):
            head, _, rest = line.partition(":  ")
            lines[i] = f"{head}:  \u201c{rest.rstrip('.')}\u201d"
            break
    return "\n".join(lines).encode("cp1252")
