"""Reading a MIMIC-CXR-JPG root as a user downloads it (real or synthetic).

The root holds ``files/`` and the gzip-compressed CSVs; reports come from
``mimic-cxr-reports.zip`` (read in place) or its extracted folder. This module plans one
:class:`StudyPlan` per study (which images to try, in which order, its split and labels)
without touching an image; the workers in :mod:`limitr.data.preprocess` do the decoding.

Problems found while planning are named (the same names end up in the stage's report):
``not_in_split``, ``split_unknown``, ``lateral_only``, ``no_frontal_view_empty``,
``no_frontal_view_unknown`` skip a study; ``view_empty``, ``view_unknown``,
``view_from_code_meaning``, ``metadata_cell_missing``, ``labels_missing`` and
``label_invalid`` degrade it (it is kept).

A metadata row whose dicom_id is not a plain file name (a path such as ``../x``, a slash,
a control character) is never opened: the row is dropped as ``bad_dicom_id`` and a study left
without a frontal image by it is skipped with that reason. A row whose subject_id or
study_id is not a non-negative number and cannot be recovered from the split file is dropped
as ``bad_subject_id`` / ``bad_study_id``. Every dropped row is named by its dicom_id in
:class:`RowReport` (rows used + rows dropped = rows read).
"""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from limitr.data.schema import CHEXPERT_LABELS, SPLITS
from limitr.errors import LimitrError

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_FILE = "mimic-cxr-2.0.0-negbio.csv.gz"  # not read: the CheXpert labels are the ones used

FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")  # in order of preference
LATERAL_VIEWS: tuple[str, ...] = ("LATERAL", "LL")
#: ViewCodeSequence_CodeMeaning values that name a usable view (used when ViewPosition is empty).
_CODE_MEANING_VIEWS = {
    "postero-anterior": "PA",
    "antero-posterior": "AP",
    "lateral": "LATERAL",
    "left lateral": "LL",
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: A dicom_id usable as a file name inside a study folder: letters, digits, ``.``, ``_``, ``-``,
#: not starting with a dot (so neither ``..`` nor a hidden name), at most 128 characters.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def plain_file_name(name: str) -> bool:
    """Whether ``name`` is a plain file name: no folder part, no ``..``, no odd characters."""
    return bool(_PLAIN_NAME.match(name))


@dataclass
class RowReport:
    """What became of the metadata rows: ``read`` = ``used`` + the rows in ``dropped``
    (reason -> the dicom_ids, or ``row N`` where the dicom_id cell is empty)."""

    read: int = 0
    used: int = 0
    dropped: dict = field(default_factory=dict)

    def drop(self, reason: str, names: list) -> None:
        if names:
            self.dropped.setdefault(reason, []).extend(names)

    def as_dict(self) -> dict:
        return {"rows_read": self.read, "rows_used": self.used,
                "rows_dropped": {k: sorted(v) for k, v in sorted(self.dropped.items())}}
_STUDY_TXT = re.compile(r"(?:^|/)s(\d+)\.txt$")


@dataclass(frozen=True)
class ImageRef:
    """One image of a study as the metadata lists it."""

    dicom_id: str
    view: str  # PA, AP, LATERAL or LL
    study_date: float  # YYYYMMDD (shifted); inf when missing, so it sorts last
    study_time: float  # HHMMSS.fff; inf when missing
    path: Optional[str] = None  # the image file, for sources other than MIMIC-CXR (resolved at planning)

    @property
    def sort_key(self) -> tuple[float, float, str]:
        return (self.study_date, self.study_time, self.dicom_id)


@dataclass(frozen=True)
class ReadyText:
    """A study's report as a source other than MIMIC-CXR gives it: already split and cleaned."""

    text: str  # the model text (cleaned, lower case)
    text_source: str  # findings+impression | findings | impression | report
    findings: Optional[str] = None
    impression: Optional[str] = None


@dataclass(frozen=True)
class StudyPlan:
    """What to read for one study; ``skip`` set when planning already rules it out."""

    subject_id: int
    study_id: int
    split: Optional[str]
    frontals: tuple[ImageRef, ...]  # PA before AP, then (date, time, dicom_id)
    laterals: tuple[ImageRef, ...]  # LATERAL before LL, then (date, time, dicom_id)
    labels: tuple[Optional[float], ...]  # the 14 CheXpert labels, None = not mentioned
    degraded: tuple[str, ...] = ()
    skip: Optional[str] = None
    report: Optional[ReadyText] = None  # set by the IU and manifest readers; MIMIC reads report files


def find_csv(root: Path, name: str) -> Path:
    """The metadata file ``name`` under ``root`` (``.csv.gz`` as downloaded, or ``.csv``)."""
    path = root / name
    if path.is_file():
        return path
    plain = root / name.removesuffix(".gz")
    if plain.is_file():
        return plain
    raise LimitrError(
        f"missing metadata file {path}: a MIMIC-CXR-JPG root holds files/ and "
        f"{METADATA_FILE}, {SPLIT_FILE} and {CHEXPERT_FILE}"
    )


def check_root(root: Path) -> None:
    """Raise LimitrError unless ``root`` looks like a MIMIC-CXR-JPG root."""
    root = Path(root)
    if not root.is_dir():
        raise LimitrError(f"MIMIC-CXR-JPG root {root} does not exist or is not a folder")
    if not (root / "files").is_dir():
        raise LimitrError(
            f"{root} is not a MIMIC-CXR-JPG root: it has no files/ folder "
            "(point --mimic-root at the folder that holds files/ and the csv.gz files)"
        )
    for name in (METADATA_FILE, SPLIT_FILE, CHEXPERT_FILE):
        find_csv(root, name)


def read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A metadata CSV as strings (empty cells are NaN); fatal when unreadable or incomplete."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError,
            pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LimitrError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise LimitrError(f"{path} lacks the column(s) {', '.join(missing)}")
    return frame


def _ids(series: pd.Series) -> pd.Series:
    """Ids as non-negative integers; anything else (text, a fraction, a sign) is missing."""
    text = series.str.strip()
    text = text.where(text.str.fullmatch(r"\d{1,18}(?:\.0*)?").fillna(False).astype(bool))
    return pd.to_numeric(text, errors="coerce").astype("Int64")


def _normalise_views(meta: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """``(view, note)`` per image: view in FRONTAL/LATERAL_VIEWS or "" (ignored), note a
    degraded reason or ""."""
    position = meta["ViewPosition"].fillna("").str.strip().str.upper()
    if "ViewCodeSequence_CodeMeaning" in meta.columns:
        meaning = meta["ViewCodeSequence_CodeMeaning"].fillna("").str.strip().str.lower()
    else:
        meaning = pd.Series("", index=meta.index)
    from_meaning = meaning.map(_CODE_MEANING_VIEWS).fillna("")
    usable = position.isin(FRONTAL_VIEWS + LATERAL_VIEWS)
    empty = position == ""
    recovered = empty & (from_meaning != "")
    view = position.where(usable, "").where(~recovered, from_meaning)
    note = pd.Series("", index=meta.index)
    note[empty & ~recovered] = "view_empty"
    note[recovered] = "view_from_code_meaning"
    # rare views of the release (SWIMMERS, LAO, AP AXIAL, ...) are named too: the image is
    # left out, and a study whose only frontal it was must say why it has none
    note[~usable & ~empty] = "view_unknown"
    return view, note


def _labels(chexpert: pd.DataFrame) -> tuple[dict[int, tuple[Optional[float], ...]], set[int]]:
    """Labels per study and the studies with a value outside {1, 0, -1, empty}."""
    chexpert = chexpert.assign(study_id=_ids(chexpert["study_id"])).dropna(subset=["study_id"])
    chexpert = chexpert.drop_duplicates("study_id", keep="first")
    raw = chexpert[list(CHEXPERT_LABELS)]
    values = raw.apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
    invalid = (raw.notna() & ~values.isin([1.0, 0.0, -1.0])).any(axis=1)
    values = values.where(values.isin([1.0, 0.0, -1.0]))
    matrix = values.to_numpy(dtype=np.float64)
    labels = {
        int(sid): tuple(None if np.isnan(v) else float(v) for v in row)
        for sid, row in zip(chexpert["study_id"].to_numpy(), matrix)
    }
    return labels, set(int(s) for s in chexpert["study_id"][invalid.to_numpy()])


def plan_studies(root: Path) -> list[StudyPlan]:
    """One plan per study of the metadata file, sorted by (subject_id, study_id)."""
    return plan_studies_and_rows(root)[0]


def _row_names(frame: pd.DataFrame) -> list[str]:
    """How the report names metadata rows: the dicom_id, or ``row N`` (1-based data row)."""
    return [d if isinstance(d, str) and d else f"row {i + 1}" for i, d in zip(frame.index, frame["dicom_id"])]


def plan_studies_and_rows(root: Path) -> tuple[list[StudyPlan], RowReport]:
    """:func:`plan_studies` and the account of every metadata row (used or dropped, why)."""
    root = Path(root)
    check_root(root)
    meta = read_csv(find_csv(root, METADATA_FILE),
                    ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"))
    split = read_csv(find_csv(root, SPLIT_FILE), ("dicom_id", "study_id", "subject_id", "split"))
    chexpert = read_csv(find_csv(root, CHEXPERT_FILE), ("subject_id", "study_id", *CHEXPERT_LABELS))
    if meta.empty:
        raise LimitrError(f"{find_csv(root, METADATA_FILE)} lists no images")
    rows = RowReport(read=len(meta))
    meta = meta.reset_index(drop=True)

    # ids: a missing cell is recovered from the split file (by dicom_id) where possible
    split = split.assign(subject_id=_ids(split["subject_id"]), study_id=_ids(split["study_id"]),
                         dicom_id=split["dicom_id"].str.strip())
    by_dicom = split.dropna(subset=["dicom_id"]).drop_duplicates("dicom_id").set_index("dicom_id")
    meta = meta.assign(dicom_id=meta["dicom_id"].str.strip(),
                       subject_id=_ids(meta["subject_id"]), study_id=_ids(meta["study_id"]))
    # a dicom_id that is not a plain file name is never joined to a path
    bad_name = meta["dicom_id"].notna() & ~meta["dicom_id"].fillna("").map(plain_file_name)
    bad_rows = meta[bad_name]
    meta = meta.assign(dicom_id=meta["dicom_id"].where(~bad_name, None), bad_dicom_id=bad_name)
    incomplete = meta[["dicom_id", "subject_id", "study_id", "StudyDate", "StudyTime"]].isna().any(axis=1)
    incomplete &= ~bad_name
    meta["study_id"] = meta["study_id"].fillna(meta["dicom_id"].map(by_dicom["study_id"]))
    meta["subject_id"] = meta["subject_id"].fillna(meta["dicom_id"].map(by_dicom["subject_id"]))
    study_subject = split.dropna(subset=["study_id", "subject_id"]).drop_duplicates("study_id")
    meta["subject_id"] = meta["subject_id"].fillna(
        meta["study_id"].map(study_subject.set_index("study_id")["subject_id"]))
    meta = meta.assign(incomplete=incomplete)
    no_study = meta["study_id"].isna()
    no_subject = meta["subject_id"].isna() & ~no_study
    names = _row_names(meta.assign(dicom_id=meta["dicom_id"].where(~bad_name, bad_rows["dicom_id"])))
    for reason, mask in (("bad_study_id", no_study), ("bad_subject_id", no_subject)):
        rows.drop(reason, [n for n, m in zip(names, mask.tolist()) if m])
    meta = meta[~(no_study | no_subject)]
    # rows with a bad dicom_id but good ids: dropped here, named at study level below too
    rows.drop("bad_dicom_id", [n for n, m in zip(_row_names(bad_rows), bad_rows.index) if m in meta.index])
    rows.used = rows.read - sum(len(v) for v in rows.dropped.values())

    view, note = _normalise_views(meta)
    meta = meta.assign(
        view=view, note=note,
        date=pd.to_numeric(meta["StudyDate"], errors="coerce").fillna(np.inf),
        time=pd.to_numeric(meta["StudyTime"], errors="coerce").fillna(np.inf),
    )

    # split per study: the value its images agree on; an empty cell is named, not fatal
    split_rows = split.dropna(subset=["study_id"]).sort_values(["study_id", "dicom_id"], kind="stable")
    split_value = split_rows["split"].fillna("").str.strip()
    split_of: dict[int, Optional[str]] = {}
    split_incomplete: set[int] = set()
    for sid, value in zip(split_rows["study_id"].tolist(), split_value.tolist()):
        sid = int(sid)
        if value not in SPLITS:
            split_incomplete.add(sid)
            split_of.setdefault(sid, None)
        elif split_of.get(sid) is None:
            split_of[sid] = value
    labels, invalid_labels = _labels(chexpert)

    # plain arrays and group boundaries: a pandas groupby per study is far too slow at 227k
    meta = meta.sort_values(["subject_id", "study_id", "dicom_id"], kind="stable")
    subjects = meta["subject_id"].to_numpy(dtype=np.int64)
    studies = meta["study_id"].to_numpy(dtype=np.int64)
    note = meta["note"].where(~meta["bad_dicom_id"], "bad_dicom_id")
    columns = (meta["dicom_id"].fillna("").tolist(), meta["view"].tolist(), note.tolist(),
               meta["incomplete"].tolist(), meta["date"].tolist(), meta["time"].tolist())
    starts = np.flatnonzero(np.r_[True, (studies[1:] != studies[:-1]) | (subjects[1:] != subjects[:-1])])
    ends = np.r_[starts[1:], len(studies)]
    plans = [
        _plan_one(int(subjects[a]), int(studies[a]), [c[a:b] for c in columns],
                  split_of, split_incomplete, labels, invalid_labels)
        for a, b in zip(starts.tolist(), ends.tolist())
    ]
    return plans, rows


def _plan_one(subject_id: int, study_id: int, rows: list[list], split_of: dict[int, Optional[str]],
              split_incomplete: set[int], labels: dict, invalid_labels: set[int]) -> StudyPlan:
    dicom_ids, views, notes, incomplete, dates, times = rows
    degraded = set(n for n in notes if n)
    if any(incomplete) or study_id in split_incomplete:
        degraded.add("metadata_cell_missing")
    refs = [ImageRef(d, v, float(dt), float(tm))
            for d, v, dt, tm in zip(dicom_ids, views, dates, times) if d and v]
    frontals = tuple(sorted((r for r in refs if r.view in FRONTAL_VIEWS),
                            key=lambda r: (FRONTAL_VIEWS.index(r.view), r.sort_key)))
    laterals = tuple(sorted((r for r in refs if r.view in LATERAL_VIEWS),
                            key=lambda r: (LATERAL_VIEWS.index(r.view), r.sort_key)))
    study_labels = labels.get(study_id)
    if study_labels is None:
        degraded.add("labels_missing")
        study_labels = (None,) * len(CHEXPERT_LABELS)
    if study_id in invalid_labels:
        degraded.add("label_invalid")

    split = split_of.get(study_id)
    skip = None
    if study_id not in split_of:
        skip = "not_in_split"
    elif split is None:
        skip = "split_unknown"
    elif not frontals:
        if "bad_dicom_id" in degraded:
            skip = "bad_dicom_id"
        elif "view_empty" in degraded:
            skip = "no_frontal_view_empty"
        elif "view_unknown" in degraded:
            skip = "no_frontal_view_unknown"
        elif laterals:
            skip = "lateral_only"
        else:
            skip = "no_frontal_view"
    return StudyPlan(
        subject_id=subject_id, study_id=study_id, split=split,
        frontals=frontals, laterals=laterals, labels=study_labels,
        degraded=tuple(sorted(degraded)), skip=skip,
    )


def study_folder(root: Path, subject_id: int, study_id: int) -> Path:
    """``root/files/pXX/pSSSSSSSS/sTTTTTTTT``."""
    subject = f"{subject_id:08d}"
    return Path(root) / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id:08d}"


def image_path(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """The image file of ``dicom_id`` (``.jpg``, else ``.jpeg`` or ``.png`` where that exists)."""
    folder = study_folder(root, subject_id, study_id)
    for suffix in _IMAGE_SUFFIXES:
        candidate = folder / f"{dicom_id}{suffix}"
        if candidate.exists():
            return candidate
    return folder / f"{dicom_id}.jpg"


class UnreadableReport(Exception):
    """One report file could not be read (a damaged zip member): that study is skipped."""


class ReportSource:
    """Report texts by study, from ``mimic-cxr-reports.zip`` (read in place) or its folder.

    Picklable: a worker process reopens the zip on first use.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._zip: Optional[zipfile.ZipFile] = None
        self._members: Optional[dict[int, str]] = None
        if not self.path.exists():
            raise LimitrError(f"reports {self.path} do not exist (give mimic-cxr-reports.zip or its extracted folder)")
        self.is_zip = self.path.is_file()
        if self.is_zip:
            self._open()
        else:
            self._base = self.path / "files" if (self.path / "files").is_dir() else self.path

    def _open(self) -> None:
        try:
            self._zip = zipfile.ZipFile(self.path)
            names = sorted(self._zip.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise LimitrError(f"cannot read the reports zip {self.path}: {exc}") from exc
        members: dict[int, str] = {}
        for name in names:
            match = _STUDY_TXT.search(name)
            if match:
                members.setdefault(int(match.group(1)), name)
        self._members = members

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"] = None
        state["_members"] = None
        return state

    def __len__(self) -> int:
        if self.is_zip:
            if self._members is None:
                self._open()
            return len(self._members or {})
        return sum(1 for _ in self._base.rglob("s*.txt"))

    def read(self, subject_id: int, study_id: int) -> Optional[bytes]:
        """The report's bytes, or None when the study has no report file."""
        if not self.is_zip:
            subject = f"{subject_id:08d}"
            path = self._base / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id:08d}.txt"
            return path.read_bytes() if path.is_file() else None
        if self._zip is None or self._members is None:
            self._open()
        assert self._members is not None and self._zip is not None
        name = self._members.get(study_id)
        if name is None:
            return None
        try:
            return self._zip.read(name)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise UnreadableReport(f"{self.path}:{name}: {exc}") from exc
