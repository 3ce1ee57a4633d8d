"""preprocess on crafted metadata: paths that leave the root, ids that are not numbers,
images over the pixel limit. Every row read is accounted for; nothing outside the root is read."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from limitr.data.images import BadImage, process_image_bytes
from limitr.data.mimic import plain_file_name
from limitr.data.preprocess import PreprocessConfig, plan_preprocess, run_preprocess
from mimic_fixture import Img, Study, dicom_id, grey_jpeg, write_root

SIZE = 32


def _rewrite_csv(path: Path, change) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = change(frame)
    with gzip.open(path, "wt", newline="") as fh:
        fh.write(frame.to_csv(index=False))


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("crafted")
    studies = [
        Study(10000001, 50000001, [Img("PA", name=dicom_id("good"))]),
        # its only frontal names a file outside the study folder (and outside the root)
        Study(10000002, 50000002, [Img("PA", name=dicom_id("escape")), Img("LATERAL", name=dicom_id("lat"))]),
        # a good frontal and a second frontal with a bad name: kept, the bad row dropped
        Study(10000003, 50000003, [Img("PA", name=dicom_id("ok3")), Img("AP", name=dicom_id("bad3"))]),
        # subject_id not a number anywhere: the row cannot be placed
        Study(10000004, 50000004, [Img("PA", name=dicom_id("nosubject"))]),
        # subject_id not a number in the metadata only: recovered from the split file
        Study(10000005, 50000005, [Img("PA", name=dicom_id("recover"))]),
    ]
    root, reports = write_root(base, studies)
    # a readable JPEG planted outside the root, where a ../ dicom_id would lead
    outside = base / "outside"
    outside.write_bytes(grey_jpeg(90, 110, seed=3))
    escape = "../../../../../outside"
    bad3 = "sub/dir"

    def meta(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame["dicom_id"] == dicom_id("escape"), "dicom_id"] = escape
        frame.loc[frame["dicom_id"] == dicom_id("bad3"), "dicom_id"] = bad3
        frame.loc[frame["dicom_id"] == dicom_id("nosubject"), "subject_id"] = "p10000004"
        frame.loc[frame["dicom_id"] == dicom_id("recover"), "subject_id"] = "ten"
        return frame

    def split(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame["dicom_id"] == dicom_id("escape"), "dicom_id"] = escape
        frame.loc[frame["dicom_id"] == dicom_id("bad3"), "dicom_id"] = bad3
        frame.loc[frame["dicom_id"] == dicom_id("nosubject"), "subject_id"] = "x"
        frame.loc[frame["study_id"] == "50000004", "subject_id"] = "x"
        return frame

    _rewrite_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta)
    _rewrite_csv(root / "mimic-cxr-2.0.0-split.csv.gz", split)
    return root, reports, outside


def _run(root: Path, reports: Path, out: Path, **kwargs) -> dict:
    config = PreprocessConfig(mimic_root=root, reports=reports, image_size=SIZE, shard_size=3, workers=1, **kwargs)
    return run_preprocess(plan_preprocess(config), out)


@pytest.mark.parametrize("name,ok", [
    ("abc-123.dcm", True), ("0a1b", True), ("../x", False), ("a/b", False), ("..", False),
    (".hidden", False), ("a\\b", False), ("", False), ("a\nb", False), ("/etc/passwd", False),
])
def test_plain_file_names(name: str, ok: bool) -> None:
    assert plain_file_name(name) is ok


def test_every_row_and_study_named(crafted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, reports, outside = crafted
    opened: list[str] = []
    real_read = Path.read_bytes

    def spy(self: Path) -> bytes:
        opened.append(str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    report = _run(root, reports, tmp_path / "out")
    assert not any("outside" in p for p in opened), opened
    assert report["skipped"] == {"bad_dicom_id": [50000002]}
    assert report["studies_kept"] == 3 and report["studies_total"] == 4
    assert report["rows_dropped"] == {
        "bad_dicom_id": ["../../../../../outside", "sub/dir"],
        "bad_subject_id": [dicom_id("nosubject")],
    }
    # nothing vanishes: rows used + rows dropped = rows read
    dropped = sum(len(v) for v in report["rows_dropped"].values())
    assert report["rows_used"] + dropped == report["rows_read"] == 7
    assert 50000005 in report["degraded"]["metadata_cell_missing"]
    assert 50000003 in report["degraded"]["bad_dicom_id"]


def test_image_over_the_pixel_limit_is_named_too_large(crafted, tmp_path: Path) -> None:
    root, reports, _ = crafted
    report = _run(root, reports, tmp_path / "out", max_pixels=90 * 110 - 1)
    assert report["studies_kept"] == 0
    assert set(report["skipped"]) == {"bad_dicom_id", "frontal_image_too_large"}
    with pytest.raises(BadImage) as info:
        process_image_bytes(grey_jpeg(90, 110, seed=1), SIZE, max_pixels=1000)
    assert info.value.reason == "too_large" and "preprocess.max_pixels" in str(info.value)


def test_huge_header_refused_before_decoding() -> None:
    """A 15000 x 15000 PNG (all black, a few kilobytes) is refused from its header."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, format="PNG")
    with pytest.raises(BadImage) as info:
        process_image_bytes(buf.getvalue(), SIZE)
    assert info.value.reason == "too_large"


def test_stage_reports_and_max_pixels_setting(crafted, tmp_path: Path) -> None:
    from stages.cli import app
    import stages.app  # noqa: F401  (registers the commands)

    root, reports, _ = crafted
    params = tmp_path / "params.yaml"
    params.write_text(f"preprocess:\n  mimic_root: {root}\n  reports: {reports}\n  ms_cxr: null\n"
                      f"  class_retrieval: null\n  out: {tmp_path / 'shards'}\n  image_size: {SIZE}\n"
                      "  workers: 1\n  max_pixels: 5000\n")
    result = CliRunner().invoke(app, ["preprocess", "--params", str(params)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "shards" / "report.json").read_text())
    assert "frontal_image_too_large" in report["skipped"]
    assert report["rows_read"] == report["rows_used"] + sum(len(v) for v in report["rows_dropped"].values())
