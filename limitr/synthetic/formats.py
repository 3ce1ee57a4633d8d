"""The public file formats, written byte-for-byte reproducibly.

gzip members carry no name and mtime 0; zip members carry a fixed timestamp and
permissions; CSV cells are formatted by hand (1.0 / 0.0 / -1.0 / empty for labels).
Column orders follow the MIMIC-CXR-JPG 2.0.0, MS-CXR 1.1.0 and CheXpert 5x200 files.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

from limitr.data.schema import CHEXPERT_LABELS

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
MS_CXR_COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                  "image_width", "image_height", "split")
CHEXPERT_5X200_COLUMNS = ("Path", *CHEXPERT_LABELS)

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_FILE = "mimic-cxr-2.0.0-negbio.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"
MS_CXR_FILE = "ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv"
CHEXPERT_5X200_FILE = "chexpert_5x200.csv"

#: The timestamp of every zip member (zip has no way to say "none").
ZIP_TIME = (2019, 9, 17, 0, 0, 0)

#: ViewCodeSequence_CodeMeaning per ViewPosition.
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


def label_cell(value: Optional[float]) -> str:
    """CheXpert label formatting: 1.0, 0.0, -1.0 or empty."""
    return "" if value is None else f"{float(value):.1f}"


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV with a header, ``\\n`` line ends, minimal quoting; None is an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv_text(columns, rows).encode("utf-8"))


def write_csv_gz(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A gzip-compressed CSV with no file name and mtime 0 in the gzip header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = csv_text(columns, rows).encode("utf-8")
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        gz.write(data)


def write_zip(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """A deflated zip whose members have a fixed time, permissions and creator system."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
