"""Reading the Indiana University chest X-ray collection (IU X-ray / Open-i) in either of its
two public layouts into the study plans every source shares (:mod:`limitr.data.sources`).

Kaggle layout (``layout = "kaggle"``), a root holding::

    indiana_reports.csv       uid, MeSH, Problems, image, indication, comparison, findings, impression
    indiana_projections.csv   uid, filename, projection (Frontal | Lateral)
    images/images_normalized/<filename>   (PNG; a downsized copy may carry the same stem as .jpg)

Open-i layout (``layout = "openi"``): ``NLMCXR_reports.tgz`` (read in place) or its extracted
``ecgen-radiology/<n>.xml``, and the extracted ``NLMCXR_png.tgz`` images ``CXR<n>_<...>.png``
(in ``NLMCXR_png/`` or the root itself). Open-i gives no view: when an
``indiana_projections.csv`` is found (in the root, or named by ``projections``) its views are
used; otherwise the rule is *name order*: the report's images sorted by name, the first is
taken as frontal and the second as lateral. report.json names which (``source.view_source``).
On the Kaggle table the rule is right for 89% of the studies with one frontal and one lateral.

One study per report: study_id = patient id = the uid (IU has one report per patient). Several
frontal images: the first by file name is used (the next when it cannot be decoded); the same
for laterals. Text: FINDINGS then IMPRESSION with every ``XXXX`` removed (counted under
``source.placeholders_removed``); the findings / impression columns keep the text as given.
Labels: the 14 CheXpert observations from the MeSH terms (Problems when MeSH is empty); the
table is in docs/data-formats.md. A study indexed ``No Indexing`` has no labels
(``labels_missing``). The split is by patient, seeded (see :func:`patient_splits`).

Bad records (the names in report.json):

- index rows: ``bad_uid`` (not a number), ``bad_filename`` (not a plain file name),
  ``uid_not_in_reports`` (an image whose uid has no report), ``duplicate_uid`` (a report row
  repeated: the first is kept) under ``rows_dropped``;
- studies skipped: ``no_images`` (a report whose uid has no image), ``report_empty`` (no
  findings and no impression left), ``report_unreadable`` (an Open-i XML that does not
  parse), ``lateral_only``, ``no_frontal_view_unknown`` (the only frontal had an unknown
  projection), ``frontal_image_missing`` and the other image reasons of preprocess;
- degraded: ``view_unknown`` (a projection other than Frontal / Lateral: image ignored),
  ``image_as_jpg`` (the named PNG absent, the same stem as .jpg used), ``placeholder_removed``,
  ``labels_missing``.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pandas as pd

from limitr.data.mimic import ImageRef, ReadyText, RowReport, StudyPlan, plain_file_name, read_csv
from limitr.data.reports import clean_text
from limitr.data.schema import CHEXPERT_LABELS
from limitr.data.sources import SourcePlan, patient_splits, remove_placeholders
from limitr.errors import LimitrError

REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
KAGGLE_IMAGES = Path("images") / "images_normalized"
OPENI_REPORTS_TGZ = "NLMCXR_reports.tgz"
OPENI_REPORTS_DIR = "ecgen-radiology"
OPENI_IMAGES = "NLMCXR_png"
LAYOUTS = ("auto", "kaggle", "openi")
_SUFFIXES = (".png", ".jpg", ".jpeg")

#: MeSH main heading (the part before the first ``/``, lower case) -> CheXpert observation.
#: A heading not listed names no observation. ``normal`` sets No Finding.
MESH_TO_CHEXPERT: dict[str, str] = {
    "pulmonary atelectasis": "Atelectasis",
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema",
    "edema": "Edema",
    "pulmonary congestion": "Edema",
    "fractures, bone": "Fracture",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "cavitation": "Lung Lesion",
    "opacity": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "density": "Lung Opacity",
    "pleural effusion": "Pleural Effusion",
    "hydropneumothorax": "Pneumothorax",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "catheters, indwelling": "Support Devices",
    "implanted medical device": "Support Devices",
    "medical device": "Support Devices",
    "tube, inserted": "Support Devices",
    "stents": "Support Devices",
    "surgical instruments": "Support Devices",
}
#: Headings that need a modifier (after ``/``) to name the observation.
MESH_WITH_MODIFIER: dict[tuple[str, str], str] = {
    ("mediastinum", "enlarged"): "Enlarged Cardiomediastinum",
    ("mediastinum", "widened"): "Enlarged Cardiomediastinum",
    ("cardiac shadow", "enlarged"): "Enlarged Cardiomediastinum",
    ("thickening", "pleura"): "Pleural Other",
    ("pleura", "thickening"): "Pleural Other",
}
#: Also a Pleural Effusion (hydropneumothorax is both).
_ALSO = {"hydropneumothorax": "Pleural Effusion"}


def labels_from_mesh(terms: str) -> Optional[tuple[float, ...]]:
    """The 14 CheXpert labels of one report's ``;``-separated MeSH terms: 1.0 for each
    observation a term names, 0.0 for the others (the MeSH indexing lists every finding);
    None when the report is not indexed (empty or ``No Indexing``)."""
    parts = [t.strip() for t in str(terms or "").split(";") if t.strip()]
    if not parts or any(p.lower() == "no indexing" for p in parts):
        return None
    positive: set[str] = set()
    normal = False
    for term in parts:
        pieces = [p.strip().lower() for p in term.split("/")]
        head, modifiers = pieces[0], pieces[1:]
        if head == "normal":
            normal = True
            continue
        if head in MESH_TO_CHEXPERT:
            positive.add(MESH_TO_CHEXPERT[head])
        if head in _ALSO:
            positive.add(_ALSO[head])
        for modifier in modifiers:
            if (head, modifier) in MESH_WITH_MODIFIER:
                positive.add(MESH_WITH_MODIFIER[(head, modifier)])
    findings = any(t.split("/")[0].strip().lower() != "normal" for t in parts)
    values = {name: (1.0 if name in positive else 0.0) for name in CHEXPERT_LABELS}
    values["No Finding"] = 1.0 if normal and not findings else 0.0
    return tuple(values[n] for n in CHEXPERT_LABELS)


def model_text(findings: Optional[str], impression: Optional[str]) -> tuple[Optional[ReadyText], int]:
    """The study text from the two sections (``XXXX`` removed), and the placeholders removed."""
    parts, names, removed = [], [], 0
    for name, section in (("findings", findings), ("impression", impression)):
        if not section or not section.strip():
            continue
        text, n = remove_placeholders(section)
        removed += n
        text = clean_text(text)
        if text and re.search(r"\w", text):
            parts.append(text)
            names.append(name)
    if not parts:
        return None, removed
    source = "+".join(names)
    return ReadyText(" ".join(parts), source, findings or None, impression or None), removed


def detect_layout(root: Path, layout: str = "auto") -> str:
    """``kaggle`` or ``openi``: the one named, or the one whose files the root holds."""
    root = Path(root)
    if not root.is_dir():
        raise LimitrError(f"IU X-ray root {root} does not exist or is not a folder")
    if layout not in LAYOUTS:
        raise LimitrError(f"IU layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    kaggle = (root / REPORTS_CSV).is_file()
    openi = (root / OPENI_REPORTS_TGZ).is_file() or (root / OPENI_REPORTS_DIR).is_dir()
    if layout == "auto":
        if kaggle:
            return "kaggle"
        if openi:
            return "openi"
        raise LimitrError(
            f"{root} is not an IU X-ray root: it holds neither {REPORTS_CSV} (Kaggle copy) nor "
            f"{OPENI_REPORTS_TGZ} / {OPENI_REPORTS_DIR}/ (Open-i release)")
    if layout == "kaggle" and not kaggle:
        raise LimitrError(f"{root} has no {REPORTS_CSV} (the Kaggle copy of IU X-ray)")
    if layout == "openi" and not openi:
        raise LimitrError(f"{root} has neither {OPENI_REPORTS_TGZ} nor {OPENI_REPORTS_DIR}/ (the Open-i release)")
    return layout


def _uid(value: object) -> Optional[int]:
    text = str(value).strip() if isinstance(value, str) else ""
    text = text.removeprefix("CXR")
    return int(text) if re.fullmatch(r"\d{1,12}", text) else None


def _find_image(folder: Path, filename: str) -> tuple[Path, bool]:
    """The file for ``filename`` in ``folder``: as named, else the same stem with another
    image suffix (``x.dcm.png`` -> ``x.dcm.jpg``); ``(path, used_other_suffix)``."""
    named = folder / filename
    if named.is_file():
        return named, False
    stem = filename[: -len(Path(filename).suffix)] if Path(filename).suffix else filename
    for suffix in _SUFFIXES:
        other = folder / f"{stem}{suffix}"
        if other.is_file():
            return other, True
    return named, False


@dataclass
class _Image:
    uid: int
    name: str  # the id in the index (Kaggle filename, Open-i parentImage id)
    view: str  # FRONTAL, LATERAL or "" (unknown)
    note: str  # "view_unknown" or ""


def _read_projections(path: Path, rows: RowReport) -> list[_Image]:
    frame = read_csv(path, ("uid", "filename", "projection"))
    rows.read += len(frame)
    images = []
    for i, (uid, name, projection) in enumerate(zip(frame["uid"], frame["filename"], frame["projection"])):
        label = name.strip() if isinstance(name, str) else f"row {i + 1}"
        number = _uid(uid)
        if number is None:
            rows.drop("bad_uid", [label])
            continue
        if not isinstance(name, str) or not plain_file_name(name.strip()):
            rows.drop("bad_filename", [label])
            continue
        view = str(projection).strip().upper() if isinstance(projection, str) else ""
        known = view in ("FRONTAL", "LATERAL")
        images.append(_Image(number, name.strip(), view if known else "", "" if known else "view_unknown"))
    return images


def _plan(uid: int, images: Sequence[tuple[_Image, Path, bool]], text: Optional[ReadyText],
          placeholders: int, labels: Optional[tuple[float, ...]], split: Optional[str],
          skip: Optional[str] = None) -> StudyPlan:
    degraded = {im.note for im, _, _ in images if im.note}
    degraded.update("image_as_jpg" for _, _, other in images if other)
    if placeholders:
        degraded.add("placeholder_removed")
    if labels is None:
        degraded.add("labels_missing")
        labels = (None,) * len(CHEXPERT_LABELS)  # type: ignore[assignment]
    inf = float("inf")
    refs = sorted((ImageRef(im.name, im.view, inf, inf, str(path)) for im, path, _ in images if im.view),
                  key=lambda r: r.dicom_id)
    frontals = tuple(r for r in refs if r.view == "FRONTAL")
    laterals = tuple(r for r in refs if r.view == "LATERAL")
    if skip is None:
        if not images:
            skip = "no_images"
        elif text is None:
            skip = "report_empty"
        elif not frontals:
            skip = "lateral_only" if laterals else "no_frontal_view_unknown"
    return StudyPlan(subject_id=uid, study_id=uid, split=split, frontals=frontals, laterals=laterals,
                     labels=labels, degraded=tuple(sorted(degraded)), skip=skip, report=text)  # type: ignore[arg-type]


def plan_kaggle(root: Path, images_dir: Optional[Path], fractions: Sequence[float], seed: int) -> SourcePlan:
    root = Path(root)
    images_dir = Path(images_dir) if images_dir is not None else root / KAGGLE_IMAGES
    if not images_dir.is_dir():
        raise LimitrError(f"IU images folder {images_dir} does not exist (set preprocess.iu_images to the "
                          f"folder holding the {PROJECTIONS_CSV} file names)")
    projections = root / PROJECTIONS_CSV
    if not projections.is_file():
        raise LimitrError(f"{root} has no {PROJECTIONS_CSV} (the Kaggle copy of IU X-ray has both CSVs)")
    reports = read_csv(root / REPORTS_CSV, ("uid", "findings", "impression"))
    rows = RowReport()
    images = _read_projections(projections, rows)
    by_uid: dict[int, list[_Image]] = {}
    report_uids: dict[int, int] = {}
    report_dropped: dict[str, list[str]] = {}
    for i, uid in enumerate(reports["uid"]):
        number = _uid(uid)
        if number is None:
            report_dropped.setdefault("bad_uid", []).append(f"row {i + 1}")
        elif number in report_uids:
            report_dropped.setdefault("duplicate_uid", []).append(str(number))
        else:
            report_uids[number] = i
    for im in images:
        if im.uid not in report_uids:
            rows.drop("uid_not_in_reports", [im.name])
            continue
        by_uid.setdefault(im.uid, []).append(im)
    rows.used = rows.read - sum(len(v) for v in rows.dropped.values())
    split_of = patient_splits(report_uids, fractions, seed)
    mesh = reports["MeSH"] if "MeSH" in reports.columns else pd.Series("", index=reports.index)
    problems = reports["Problems"] if "Problems" in reports.columns else pd.Series("", index=reports.index)
    plans, removed = [], 0
    for uid in sorted(report_uids):
        i = report_uids[uid]
        text, n = model_text(_cell(reports["findings"].iloc[i]), _cell(reports["impression"].iloc[i]))
        removed += n
        terms = _cell(mesh.iloc[i]) or _cell(problems.iloc[i])
        found = [(im, *_find_image(images_dir, im.name)) for im in by_uid.get(uid, [])]
        plans.append(_plan(uid, found, text, n, labels_from_mesh(terms or ""), split_of[uid]))
    info = {"name": "iu", "layout": "kaggle", "view_source": "projections_table",
            "reports_read": int(len(reports)), "report_rows_dropped": report_dropped,
            "placeholders_removed": removed}
    return SourcePlan(plans, rows, info, [(p.subject_id, p.study_id, p.split) for p in plans if p.split])


def _cell(value: object) -> Optional[str]:
    return value if isinstance(value, str) and value.strip() else None


# -- Open-i ----------------------------------------------------------------------------------

@dataclass
class _Xml:
    uid: Optional[int]
    name: str
    findings: Optional[str] = None
    impression: Optional[str] = None
    mesh: str = ""
    images: tuple[str, ...] = ()
    error: Optional[str] = None


def _parse_xml(name: str, data: bytes) -> _Xml:
    uid = _uid(Path(name).stem)
    try:
        tree = ET.fromstring(data)
    except ET.ParseError as exc:
        return _Xml(uid, name, error=str(exc))
    if uid is None:
        node = tree.find(".//uId")
        uid = _uid(node.get("id", "")) if node is not None else None
    sections = {}
    for node in tree.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        sections[label] = "".join(node.itertext()).strip() or None
    terms = [("".join(n.itertext())).strip() for tag in ("major", "automatic") for n in tree.iter(tag)]
    images = tuple(n.get("id", "").strip() for n in tree.iter("parentImage") if n.get("id"))
    return _Xml(uid, name, sections.get("FINDINGS"), sections.get("IMPRESSION"),
                ";".join(t for t in terms if t), images)


def _iter_xml(root: Path) -> Iterator[tuple[str, bytes]]:
    folder = root / OPENI_REPORTS_DIR
    if folder.is_dir():
        for path in sorted(folder.glob("*.xml")):
            yield path.name, path.read_bytes()
        return
    try:
        with tarfile.open(root / OPENI_REPORTS_TGZ) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if member.isfile() and member.name.endswith(".xml"):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield Path(member.name).name, handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise LimitrError(f"cannot read {root / OPENI_REPORTS_TGZ}: {exc}") from exc


def _openi_views(path: Optional[Path]) -> Optional[dict[str, str]]:
    """Open-i image id -> FRONTAL / LATERAL / "" from a Kaggle projections table."""
    if path is None or not path.is_file():
        return None
    frame = read_csv(path, ("uid", "filename", "projection"))
    views = {}
    for uid, name, projection in zip(frame["uid"], frame["filename"], frame["projection"]):
        if not isinstance(name, str):
            continue
        stem = name.strip()
        for suffix in (".png", ".jpg", ".dcm"):
            stem = stem.removesuffix(suffix)
        view = str(projection).strip().upper() if isinstance(projection, str) else ""
        views[f"CXR{stem}"] = view if view in ("FRONTAL", "LATERAL") else ""
    return views


def plan_openi(root: Path, images_dir: Optional[Path], projections: Optional[Path],
               fractions: Sequence[float], seed: int) -> SourcePlan:
    root = Path(root)
    if images_dir is None:
        images_dir = root / OPENI_IMAGES if (root / OPENI_IMAGES).is_dir() else root
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise LimitrError(f"IU images folder {images_dir} does not exist (extract NLMCXR_png.tgz and set "
                          "preprocess.iu_images to that folder)")
    views = _openi_views(Path(projections) if projections is not None else root / PROJECTIONS_CSV)
    if projections is not None and views is None:
        raise LimitrError(f"projections table {projections} does not exist")
    rows = RowReport()
    reports: dict[int, _Xml] = {}
    dropped: dict[str, list[str]] = {}
    unreadable: list[_Xml] = []
    read = 0
    for name, data in _iter_xml(root):
        read += 1
        record = _parse_xml(name, data)
        if record.uid is None:
            dropped.setdefault("bad_uid", []).append(name)
        elif record.uid in reports:
            dropped.setdefault("duplicate_uid", []).append(name)
        elif record.error is not None:
            unreadable.append(record)
        else:
            reports[record.uid] = record
    if not reports and not unreadable:
        raise LimitrError(f"no report XML found under {root}")
    split_of = patient_splits([*reports, *(r.uid for r in unreadable)], fractions, seed)
    plans, removed = [], 0
    for record in sorted([*reports.values(), *unreadable], key=lambda r: r.uid):  # type: ignore[arg-type,return-value]
        uid = int(record.uid)  # type: ignore[arg-type]
        if record.error is not None:
            plans.append(_plan(uid, [], None, 0, None, split_of[uid], skip="report_unreadable"))
            continue
        found, refused = [], False
        for k, image_id in enumerate(sorted(set(record.images))):
            rows.read += 1
            if not plain_file_name(image_id):
                rows.drop("bad_filename", [image_id])
                refused = True
                continue
            if views is not None:
                view = views.get(image_id, "")
            else:
                view = "FRONTAL" if k == 0 else "LATERAL"
            image = _Image(uid, image_id, view, "" if view else "view_unknown")
            found.append((image, *_find_image(images_dir, f"{image_id}.png")))
        text, n = model_text(record.findings, record.impression)
        removed += n
        plans.append(_plan(uid, found, text, n, labels_from_mesh(record.mesh), split_of[uid],
                           skip="bad_filename" if refused and not found else None))
    rows.used = rows.read - sum(len(v) for v in rows.dropped.values())
    info = {"name": "iu", "layout": "openi",
            "view_source": "projections_table" if views is not None else "name_order",
            "reports_read": read, "report_rows_dropped": dropped, "placeholders_removed": removed}
    return SourcePlan(plans, rows, info, [(p.subject_id, p.study_id, p.split) for p in plans if p.split])


def plan_iu(root: Path, layout: str = "auto", images_dir: Optional[Path] = None,
            projections: Optional[Path] = None, fractions: Sequence[float] = (0.8, 0.1, 0.1),
            seed: int = 0) -> SourcePlan:
    """The study plans of an IU X-ray root in either layout (see the module's text)."""
    found = detect_layout(Path(root), layout)
    if found == "kaggle":
        return plan_kaggle(Path(root), images_dir, fractions, seed)
    return plan_openi(Path(root), images_dir, projections, fractions, seed)
