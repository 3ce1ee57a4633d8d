"""Injected faults: every fault listed in faults.json is really in the files, and nothing
else is damaged; the evaluation tables leave faulted studies out; bad arguments are
refused with a message."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from limitr.synthetic import generate
from limitr.synthetic.faults import FAULT_KINDS
from limitr.errors import LimitrError
from synthetic_helpers import image_file, read_reports, report_member, sections

FULL_VIEWS = {"PA", "AP", "LATERAL", "LL"}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("faults") / "set"
    summary = generate(out, n_studies=60, seed=3, fault_rate=0.3, image_scale=0.05, workers=1)
    faults = json.loads((out / "faults.json").read_text())
    assert sum(summary["faults"].values()) == len(faults)
    return out, faults


def _csv(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "mimic-cxr-jpg" / name, dtype=str, keep_default_na=False, na_values=[""])


def _loads(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except OSError:
        return False


def test_every_kind_is_injected_and_recorded(faulty) -> None:
    _, faults = faulty
    assert {f["kind"] for f in faults} == set(FAULT_KINDS)
    assert len({f["study_id"] for f in faults}) == len(faults), "one fault per study"
    for f in faults:
        assert set(f) >= {"kind", "study_id", "subject_id"}
        if f["kind"] in ("truncated_jpeg", "zero_byte_image", "missing_image", "unknown_view", "empty_view",
                         "missing_csv_cell"):
            assert len(f["dicom_id"]) == 44


def test_every_fault_is_really_present(faulty) -> None:
    root, faults = faulty
    meta = _csv(root, "mimic-cxr-2.0.0-metadata.csv.gz").set_index("dicom_id", drop=False)
    split = _csv(root, "mimic-cxr-2.0.0-split.csv.gz").set_index("dicom_id", drop=False)
    reports = read_reports(root)
    for f in faults:
        kind, subject, study = f["kind"], f["subject_id"], f["study_id"]
        member = report_member(subject, study)
        if "dicom_id" in f:
            path = image_file(root, subject, study, f["dicom_id"])
        if kind == "truncated_jpeg":
            data = path.read_bytes()
            assert 16 <= len(data) and not data.endswith(b"\xff\xd9") and not _loads(path)
        elif kind == "zero_byte_image":
            assert path.is_file() and path.stat().st_size == 0
        elif kind == "missing_image":
            assert not path.exists() and f["dicom_id"] in meta.index
        elif kind == "missing_report":
            assert member not in reports
        elif kind == "empty_report":
            assert reports[member] == b""
        elif kind == "no_findings_impression":
            text = reports[member].decode("utf-8")
            assert not {"FINDINGS", "IMPRESSION", "CONCLUSION"} & set(sections(text))
            assert len(text.strip().split("\n")) > 4
        elif kind == "non_utf8_report":
            with pytest.raises(UnicodeDecodeError):
                reports[member].decode("utf-8")
            assert "FINDINGS" in reports[member].decode("cp1252") or "IMPRESSION" in reports[member].decode("cp1252")
        elif kind == "unknown_view":
            view = meta.loc[f["dicom_id"], "ViewPosition"]
            assert view == f["view_position"] and view not in FULL_VIEWS
        elif kind == "empty_view":
            assert pd.isna(meta.loc[f["dicom_id"], "ViewPosition"])
        elif kind == "missing_csv_cell":
            table = meta if f["file"] == "mimic-cxr-2.0.0-metadata.csv.gz" else split
            assert pd.isna(table.loc[f["dicom_id"], f["column"]])
        else:
            raise AssertionError(f"unchecked fault kind {kind}")


def test_nothing_else_is_damaged(faulty) -> None:
    root, faults = faulty
    damaged_images = {f["dicom_id"] for f in faults if f["kind"] in ("truncated_jpeg", "zero_byte_image", "missing_image")}
    damaged_reports = {f["study_id"] for f in faults if f["kind"] in (
        "missing_report", "empty_report", "no_findings_impression", "non_utf8_report")}
    odd_views = {f["dicom_id"] for f in faults if f["kind"] in ("unknown_view", "empty_view")}
    empty_cells = {f["dicom_id"] for f in faults if f["kind"] == "missing_csv_cell"}
    meta = _csv(root, "mimic-cxr-2.0.0-metadata.csv.gz")
    clean = meta[~meta["dicom_id"].isin(empty_cells)]
    assert not clean.isna().drop(columns="PatientOrientationCodeSequence_CodeMeaning").drop(
        index=clean.index[clean["dicom_id"].isin(odd_views)]).any().any()
    for row in meta.itertuples():
        if row.dicom_id in damaged_images or row.dicom_id in empty_cells:
            continue
        assert _loads(image_file(root, int(row.subject_id), int(row.study_id), row.dicom_id)), row.dicom_id
        if row.dicom_id not in odd_views:
            assert row.ViewPosition in FULL_VIEWS
    reports = read_reports(root)
    labels = _csv(root, "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert len(labels) == 60
    for row in labels.itertuples():
        if int(row.study_id) in damaged_reports:
            continue
        text = reports[report_member(int(row.subject_id), int(row.study_id))].decode("utf-8")
        assert {"FINDINGS", "IMPRESSION", "CONCLUSION"} & set(sections(text))


def test_evaluation_tables_leave_faulted_studies_out(faulty) -> None:
    root, faults = faulty
    faulted = {str(f["study_id"]) for f in faults}
    ms = pd.read_csv(root / "ms-cxr" / "MS_CXR_Local_Alignment_v1.1.0.csv", dtype=str)
    five = pd.read_csv(root / "chexpert_5x200.csv", dtype=str)
    studies = set(ms["path"].str.extract(r"/s(\d{8})/")[0]) | set(five["Path"].str.extract(r"/s(\d{8})/")[0])
    assert not studies & faulted


def test_gzip_and_zip_headers_are_fixed(faulty) -> None:
    root, _ = faulty
    raw = (root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\x00\x00\x00\x00", "gzip mtime must be 0"
    assert raw[3] & 0x08 == 0, "no file name in the gzip header"
    with gzip.open(root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-split.csv.gz", "rt") as fh:
        assert fh.readline().strip() == "dicom_id,study_id,subject_id,split"
    import zipfile

    with zipfile.ZipFile(root / "mimic-cxr-reports.zip") as zf:
        assert {i.date_time for i in zf.infolist()} == {(2019, 9, 17, 0, 0, 0)}
        assert all(i.filename.startswith("files/p1") for i in zf.infolist())


def test_no_faults_file_without_faults(tmp_path: Path) -> None:
    generate(tmp_path / "clean", n_studies=5, seed=1, image_scale=0.05, workers=1)
    assert not (tmp_path / "clean" / "faults.json").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"n_studies": 0}, "n_studies"),
    ({"fault_rate": 1.5}, "fault_rate"),
    ({"image_scale": 0.0}, "image_scale"),
    ({"workers": 0}, "workers"),
])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"n_studies": 3, "seed": 0, "image_scale": 0.05, **kwargs}
    with pytest.raises(LimitrError, match=message):
        generate(tmp_path / "out", **args)


def test_non_empty_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(LimitrError, match="not empty"):
        generate(tmp_path / "out", n_studies=3, seed=0, image_scale=0.05)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
