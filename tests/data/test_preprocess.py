"""The preprocess stage on hand-made MIMIC-CXR roots: view choice, bad input by reason,
geometry, determinism, sharding, fatal errors; and on the synthetic generator's roots."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from limitr.data.images import (Geometry, geometry_for, image_mask, map_box_to_original,
                                map_box_to_resized, map_to_original, png_to_array,
                                process_image_bytes)
from limitr.data.mimic import plan_studies
from limitr.data.preprocess import PreprocessConfig, merge_reports, plan_preprocess, run_preprocess
from limitr.data.schema import CHEXPERT_LABELS, CLASS_RETRIEVAL_SCHEMA, GROUNDING_SCHEMA, STUDY_SCHEMA
from limitr.data.shards import read_split, read_table
from limitr.errors import LimitrError
from mimic_fixture import Img, Study, chest_jpeg, dicom_id, grey_jpeg, report_text, write_root

SIZE = 32


def _studies() -> list[Study]:
    """One study per case, subjects chosen so --num-shards 2 splits them."""
    jpeg = grey_jpeg(90, 110, seed=99)
    return [
        # 0: AP and PA -> PA; LL and LATERAL -> LATERAL
        Study(10000001, 50000001, [Img("AP", name=dicom_id("a")), Img("PA", name=dicom_id("b")),
                                   Img("LL", name=dicom_id("c")), Img("LATERAL", name=dicom_id("d"))],
              labels={"Cardiomegaly": "1.0", "Edema": "-1.0", "No Finding": "0.0"}),
        # 1: two PAs: the earlier date wins, though its dicom_id sorts later
        Study(10000002, 50000002, [Img("PA", date="21800102", name="0" * 8 + "-" + "1" * 35),
                                   Img("PA", date="21800101", name="f" * 8 + "-" + "1" * 35)],
              split="validate"),
        # 2: lateral only
        Study(10000003, 50000003, [Img("LATERAL")]),
        # 3: no report file
        Study(10000004, 50000004, [Img("PA")], report=None),
        # 4: truncated frontal, the only one
        Study(10000005, 50000005, [Img("PA", content=jpeg[: len(jpeg) // 2])]),
        # 5: zero-byte lateral: kept, degraded
        Study(10000006, 50000006, [Img("PA"), Img("LATERAL", content=b"")], split="test"),
        # 6: not in the split file
        Study(10000007, 50000007, [Img("PA")], split=None),
        # 7: report not UTF-8
        Study(10000008, 50000008, [Img("AP")],
              report=report_text(findings="Small left effusion\xe9.").encode("latin-1")),
        # 8: no FINDINGS/IMPRESSION but a last paragraph
        Study(10000009, 50000009, [Img("PA")],
              report=b" FINAL REPORT\n \n INDICATION: cough.\n \n Lungs are clear.\n"),
        # 9: empty report
        Study(10000010, 50000010, [Img("PA")], report=b" \n \n"),
        # 10: missing frontal file but a second frontal works
        Study(10000011, 50000011, [Img("PA", write=False), Img("AP")]),
        # 11: empty ViewPosition, no code meaning: no frontal
        Study(10000012, 50000012, [Img("", meaning="")]),
        # 12: unknown view on the frontal, a known lateral
        Study(10000013, 50000013, [Img("XYZ"), Img("LATERAL")]),
        # 13: empty ViewPosition recovered from ViewCodeSequence_CodeMeaning
        Study(10000014, 50000014, [Img("", meaning="postero-anterior")]),
        # 14: not in the chexpert file
        Study(10000015, 50000015, [Img("PA")], labels=None),
        # 15: an RGB PNG saved under .jpg? no: a small plain grey study, AP, wide image
        Study(10000016, 50000016, [Img("AP", size=(120, 60))], split="test"),
    ]


EXPECTED_REPORT = {
    "studies_total": 16,
    "studies_kept": 9,
    "skipped": {
        "frontal_image_truncated": [50000005],
        "lateral_only": [50000003],
        "no_frontal_view_empty": [50000012],
        "no_frontal_view_unknown": [50000013],
        "not_in_split": [50000007],
        "report_empty": [50000010],
        "report_missing": [50000004],
    },
    "degraded": {
        "frontal_image_missing": [50000011],
        "labels_missing": [50000015],
        "lateral_image_empty": [50000006],
        "report_not_utf8": [50000008],
        "text_from_last_paragraph": [50000009],
        "view_from_code_meaning": [50000014],
    },
    "rows_read": 23,
    "rows_used": 23,
    "rows_dropped": {},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_root(tmp_path_factory.mktemp("mimic"), _studies())


def _run(root: Path, reports: Path, out: Path, **kwargs) -> dict:
    config = PreprocessConfig(mimic_root=root, reports=reports, image_size=SIZE, shard_size=3, **kwargs)
    return run_preprocess(plan_preprocess(config), out)


def _all_rows(out: Path) -> list[dict]:
    rows = []
    for split in ("train", "validate", "test"):
        rows += read_split(out, split).to_pylist()
    return sorted(rows, key=lambda r: r["study_id"])


@pytest.fixture(scope="module")
def full_run(root: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("full") / "shards"
    return out, _run(*root, out)


def test_view_selection(root: tuple[Path, Path]) -> None:
    plans = {p.study_id: p for p in plan_studies(root[0])}
    first = plans[50000001]
    assert [r.view for r in first.frontals] == ["PA", "AP"]
    assert [r.view for r in first.laterals] == ["LATERAL", "LL"]
    second = plans[50000002]
    assert [r.dicom_id[:8] for r in second.frontals] == ["f" * 8, "0" * 8]  # date before dicom_id
    assert plans[50000003].skip == "lateral_only"
    assert plans[50000014].frontals[0].view == "PA"


def test_report_names_every_bad_study(full_run: tuple[Path, dict]) -> None:
    _, report = full_run
    assert report == EXPECTED_REPORT


def test_good_studies_all_present_with_their_columns(full_run: tuple[Path, dict]) -> None:
    out, report = full_run
    rows = _all_rows(out)
    skipped = {s for ids in report["skipped"].values() for s in ids}
    expected = sorted(s.study_id for s in _studies() if s.study_id not in skipped)
    assert [r["study_id"] for r in rows] == expected
    by_id = {r["study_id"]: r for r in rows}
    first = by_id[50000001]
    assert first["frontal_dicom_id"] == dicom_id("b") and first["frontal_view"] == "PA"
    assert first["lateral_dicom_id"] == dicom_id("d") and first["lateral_view"] == "LATERAL"
    assert first["Cardiomegaly"] == 1.0 and first["Edema"] == -1.0 and first["No Finding"] == 0.0
    assert first["Atelectasis"] is None
    assert first["text"] == "the lungs are clear. no acute process."
    assert first["text_source"] == "findings+impression"
    assert first["findings"] == "The lungs are clear." and first["split"] == "train"
    assert by_id[50000002]["split"] == "validate"
    lone = by_id[50000006]
    assert lone["lateral_image"] is None and lone["lateral_dicom_id"] is None and lone["lateral_scale"] is None
    assert by_id[50000009]["text"] == "lungs are clear." and by_id[50000009]["text_source"] == "last_paragraph"
    assert "effusion\u00e9" in by_id[50000008]["text"]
    assert by_id[50000011]["frontal_view"] == "AP"
    for row in rows:
        pixels = png_to_array(row["frontal_image"])
        assert pixels.shape == (SIZE, SIZE)
        assert row["frontal_orig_width"] == 90 or row["study_id"] == 50000016
    wide = by_id[50000016]
    assert (wide["frontal_orig_width"], wide["frontal_orig_height"]) == (120, 60)
    assert wide["frontal_pad_left"] == 0 and wide["frontal_pad_top"] == 8
    pixels = png_to_array(wide["frontal_image"])
    assert pixels[:8].max() == 0 and pixels[24:].max() == 0 and pixels[8:24].mean() > 50


def test_files_follow_the_schema_and_shard_size(full_run: tuple[Path, dict]) -> None:
    out, _ = full_run
    train = sorted((out / "train").iterdir())
    assert [p.name for p in train] == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_schema(train[0]).equals(STUDY_SCHEMA)
    assert [pq.read_metadata(p).num_rows for p in train] == [3, 3]
    assert not list(out.rglob(".*tmp*"))


def test_deterministic_and_independent_of_workers(root: tuple[Path, Path], full_run: tuple[Path, dict],
                                                  tmp_path: Path) -> None:
    out, report = full_run
    again = tmp_path / "again"
    assert _run(*root, again, workers=2) == report
    for part in sorted(out.rglob("*.parquet")):
        assert part.read_bytes() == (again / part.relative_to(out)).read_bytes(), part


def test_num_shards_parts_equal_one_full_run(root: tuple[Path, Path], full_run: tuple[Path, dict],
                                              tmp_path: Path) -> None:
    out, report = full_run
    reports, rows, names = [], [], []
    for index in range(2):
        part = tmp_path / f"part{index}"
        reports.append(_run(*root, part, num_shards=2, shard_index=index))
        rows += _all_rows(part)
        names += [p.relative_to(part) for p in part.rglob("*.parquet")]
        subjects = {r["subject_id"] % 2 for r in _all_rows(part)}
        assert subjects <= {index}
    assert len(names) == len(set(names))  # parts can be copied into one folder
    assert sorted(rows, key=lambda r: r["study_id"]) == _all_rows(out)
    assert merge_reports(reports) == report


def test_reports_from_an_extracted_folder(full_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, report = full_run
    root, folder = write_root(tmp_path / "extracted", _studies(), extracted_reports=True)
    assert folder.is_dir()
    again = tmp_path / "shards"
    assert _run(root, folder, again) == report
    assert _all_rows(again) == _all_rows(out)


# -- fatal errors -------------------------------------------------------------------------

def test_fatal_errors_name_what_to_fix(root: tuple[Path, Path], tmp_path: Path) -> None:
    mimic, reports = root
    with pytest.raises(LimitrError, match="files/"):
        plan_preprocess(PreprocessConfig(mimic_root=tmp_path, reports=reports))
    with pytest.raises(LimitrError, match="does not exist"):
        plan_preprocess(PreprocessConfig(mimic_root=tmp_path / "nope", reports=reports))
    bare = tmp_path / "bare"
    (bare / "files").mkdir(parents=True)
    with pytest.raises(LimitrError, match="mimic-cxr-2.0.0-metadata.csv.gz"):
        plan_preprocess(PreprocessConfig(mimic_root=bare, reports=reports))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LimitrError, match="reports zip"):
        plan_preprocess(PreprocessConfig(mimic_root=mimic, reports=broken))


def test_stage_fatal_error_is_one_line_and_exit_1(root: tuple[Path, Path], tmp_path: Path) -> None:
    from stages.app import app

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"nonsense")
    (tmp_path / "empty.yaml").write_text("{}\n")
    result = CliRunner().invoke(app, ["preprocess", "--params", str(tmp_path / "empty.yaml"),
                                      "--mimic-root", str(root[0]), "--reports", str(broken),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output
    assert "reports zip" in lines[0]


def test_stage_writes_report_and_table(root: tuple[Path, Path], tmp_path: Path) -> None:
    from stages.app import app

    params = tmp_path / "params.yaml"
    params.write_text(
        "preprocess:\n"
        f"  mimic_root: {root[0]}\n  reports: {root[1]}\n  out: {tmp_path / 'shards'}\n"
        "  ms_cxr: null\n  class_retrieval: null\n  image_size: 16\n  workers: 1\n  shard_size: 50\n"
    )
    result = CliRunner().invoke(app, ["preprocess", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "report_missing" in result.output and "kept" in result.output
    report = json.loads((tmp_path / "shards" / "report.json").read_text())
    assert report == EXPECTED_REPORT
    row = read_split(tmp_path / "shards", "train").to_pylist()[0]
    assert png_to_array(row["frontal_image"]).shape == (16, 16)


# -- images and geometry -------------------------------------------------------------------

@pytest.mark.parametrize("width, height, size", [(2544, 3056, 256), (3056, 2544, 144), (100, 100, 64),
                                                 (37, 91, 128), (500, 211, 97)])
def test_box_round_trip(width: int, height: int, size: int) -> None:
    geometry = geometry_for(height, width, size)
    assert max(geometry.resized_width, geometry.resized_height) == size
    assert geometry.resized_width + 2 * geometry.pad_left in (size, size - 1)
    box = (0.13 * width, 0.41 * height, 0.3 * width, 0.2 * height)
    resized = map_box_to_resized(box, geometry)
    assert np.allclose(map_box_to_original(resized, geometry), box, atol=1e-9)
    # the resized box lies inside the image part of the square
    assert geometry.pad_left <= resized[0] and resized[0] + resized[2] <= geometry.pad_left + geometry.resized_width + 1


@pytest.mark.parametrize("width, height", [(400, 520), (520, 400), (1200, 1500)])
def test_a_drawn_box_lands_where_it_was(width: int, height: int) -> None:
    """A bright rectangle drawn in the original is found in the processed image; mapped
    back, its edges are within one resized pixel of where it was drawn."""
    size = 64
    pixels = np.full((height, width), 30, np.uint8)
    box = (int(0.2 * width), int(0.55 * height), int(0.31 * width), int(0.22 * height))
    x, y, w, h = box
    pixels[y : y + h, x : x + w] = 230
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    png, geometry = process_image_bytes(buf.getvalue(), size)
    out = png_to_array(png).astype(float)
    ys, xs = np.nonzero(out > 130)
    found = (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    back = map_box_to_original(found, geometry)
    tolerance = 1 / geometry.scale
    assert np.allclose(back, box, atol=tolerance), (back, box, tolerance)
    expected = map_box_to_resized(box, geometry)
    assert np.allclose(found, expected, atol=1.0)


def test_map_back_to_original_pixels() -> None:
    geometry = geometry_for(300, 200, 60)
    values = np.zeros((60, 60), np.float32)
    x, y, w, h = (int(v) for v in map_box_to_resized((50, 100, 80, 90), geometry))
    values[y : y + h, x : x + w] = 1.0
    back = map_to_original(values, geometry)
    assert back.shape == (300, 200)
    assert back[110:180, 60:120].min() > 0.99 and back[:80].max() < 0.01
    mask = image_mask(geometry, 60)
    assert mask.sum() == geometry.resized_width * geometry.resized_height
    assert not mask[:, : geometry.pad_left].any()
    cropped = geometry.after_crop(5, 5)
    assert map_box_to_resized((0, 0, 1, 1), cropped)[0] == geometry.pad_left - 5
    grid = values.reshape(10, 6, 10, 6).mean(axis=(1, 3))  # a coarse grid over the same square
    coarse = map_to_original(grid, geometry, size=60)
    assert coarse.shape == (300, 200) and abs(coarse[140, 90] - 1.0) < 0.05


def test_draft_decode_agrees_with_full_decode() -> None:
    data = chest_jpeg(1000, 1240, seed=3)
    fast, g1 = process_image_bytes(data, 64, draft=True)
    plain, g2 = process_image_bytes(data, 64, draft=False)
    assert g1 == g2
    diff = np.abs(png_to_array(fast).astype(float) - png_to_array(plain).astype(float))
    assert diff.mean() < 1.0


def test_rgb_png_and_small_inputs() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        png, geometry = process_image_bytes(buf.getvalue(), 64)
        assert png_to_array(png).shape == (64, 64)
        assert geometry == Geometry(50, 40, 64 / 50, 6, 0)
    exact = io.BytesIO()
    Image.fromarray(rgb[:, :, 0]).save(exact, format="PNG")
    png, geometry = process_image_bytes(exact.getvalue(), 50)
    assert np.array_equal(png_to_array(png)[:, 5:45], rgb[:, :, 0])


# -- evaluation tables ----------------------------------------------------------------------

def test_grounding_and_class_retrieval_tables(root: tuple[Path, Path], tmp_path: Path) -> None:
    mimic, reports = root
    frontal = dicom_id("b")
    rel = f"files/p10/p10000001/s50000001/{frontal}.jpg"
    ms_cxr = tmp_path / "ms_cxr.csv"
    ms_cxr.write_text(
        "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"
        f"{frontal},Cardiomegaly,Enlarged heart ___,{rel},10,20,30,40,90,110,test\n"
        f"{frontal},Cardiomegaly,Enlarged heart ___,{rel},50,60,10,10,90,110,test\n"
        f"{frontal},Edema,Mild edema,{rel},1,2,3,4,180,220,test\n"
        f"{dicom_id('missing')},Edema,Mild edema,files/p10/p10000099/s59999999/x.jpg,1,2,3,4,90,110,test\n"
        f"{frontal},Pneumonia,Opacity,{rel},,2,3,4,90,110,test\n"
    )
    labels = ",".join(CHEXPERT_LABELS)
    def row(path: str, positives: tuple[str, ...], impression: str) -> str:
        values = ",".join("1.0" if n in positives else "0.0" for n in CHEXPERT_LABELS)
        return f"{path},{values},{impression}\n"
    five = tmp_path / "five.csv"
    five.write_text(f"Path,{labels},Report Impression\n"
                    + row(rel, ("Cardiomegaly",), "Enlarged heart.")
                    + row(f"files/p10/p10000006/s50000006/{dicom_id('50000006-0')}.jpg", ("Edema",), "")
                    + row(rel, (), "none")
                    + row(rel, ("Edema", "Atelectasis"), "two"))
    config = PreprocessConfig(mimic_root=mimic, reports=reports, image_size=SIZE, ms_cxr=ms_cxr,
                              class_retrieval=five)
    out = tmp_path / "out"
    report = run_preprocess(plan_preprocess(config), out)
    assert report["grounding"] == {
        "phrases_total": 4, "phrases_kept": 2,
        "skipped": {"image_missing": [2], "no_valid_box": [3]},
        "degraded": {"boxes_rescaled": [1]},
    }
    assert report["class_retrieval"] == {
        "items_total": 4, "items_kept": 2,
        "skipped": {"no_positive_class": [2], "several_positive_classes": [3]}, "degraded": {},
    }
    grounding = read_table(out / "grounding.parquet")
    assert grounding.schema.equals(GROUNDING_SCHEMA)
    first, second = grounding.to_pylist()
    assert first["phrase_id"] == 0 and first["boxes"] == [[10, 20, 30, 40], [50, 60, 10, 10]]
    assert first["text"] == "enlarged heart" and first["study_id"] == 50000001
    assert second["boxes"] == [[0.5, 1.0, 1.5, 2.0]]  # CSV size 180 x 220, file 90 x 110
    items = read_table(out / "class_retrieval.parquet")
    assert items.schema.equals(CLASS_RETRIEVAL_SCHEMA)
    a, b = items.to_pylist()
    assert a["class_name"] == "Cardiomegaly" and a["text"] == "enlarged heart."
    assert b["class_name"] == "Edema" and b["text"] == "the lungs are clear. no acute process."
    assert b["study_id"] == 50000006
    assert png_to_array(a["image"]).tobytes() == png_to_array(first["image"]).tobytes()


def test_damaged_zip_member_skips_only_that_study(tmp_path: Path) -> None:
    studies = [Study(10000001, 50000001, [Img("PA")]), Study(10000002, 50000002, [Img("PA")])]
    mimic, reports = write_root(tmp_path, studies)
    data = bytearray(reports.read_bytes())
    with zipfile.ZipFile(reports) as zf:
        info = zf.getinfo("files/p10/p10000002/s50000002.txt")
    start = info.header_offset + 30 + len(info.filename)
    data[start : start + 4] = b"\x00\xff\x00\xff"
    reports.write_bytes(bytes(data))
    report = _run(mimic, reports, tmp_path / "out")
    assert report["skipped"] == {"report_unreadable": [50000002]}
    assert report["studies_kept"] == 1


# -- the synthetic generator's roots --------------------------------------------------------

def _generate():
    try:
        from limitr.synthetic import generate
    except ImportError:
        pytest.skip("the synthetic generator is not available")
    return generate


#: Where each injected fault must show up (any of these reasons, for its study).
FAULT_REASONS = {
    "truncated_jpeg": ("frontal_image_truncated", "lateral_image_truncated"),
    "zero_byte_image": ("frontal_image_empty", "lateral_image_empty"),
    "missing_image": ("frontal_image_missing", "lateral_image_missing"),
    "missing_report": ("report_missing",),
    "empty_report": ("report_empty",),
    "no_findings_impression": ("text_from_last_paragraph", "report_no_text"),
    "non_utf8_report": ("report_not_utf8",),
    "unknown_view": ("view_unknown", "no_frontal_view_unknown"),
    "empty_view": ("view_empty", "no_frontal_view_empty", "view_from_code_meaning"),
    "missing_csv_cell": ("metadata_cell_missing", "labels_missing", "label_invalid",
                         "not_in_split", "split_unknown"),
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    generate = _generate()
    base = tmp_path_factory.mktemp("synthetic")
    generate(base, n_studies=60, seed=5, fault_rate=0.4, image_scale=0.05)
    return base, json.loads((base / "faults.json").read_text())


def _synthetic_config(base: Path, **kwargs) -> PreprocessConfig:
    return PreprocessConfig(mimic_root=base / "mimic-cxr-jpg", reports=base / "mimic-cxr-reports.zip",
                            image_size=SIZE, shard_size=7,
                            ms_cxr=base / "ms-cxr" / "MS_CXR_Local_Alignment_v1.1.0.csv",
                            class_retrieval=base / "chexpert_5x200.csv", **kwargs)


@pytest.mark.slow
def test_synthetic_faults_named_and_clean_studies_kept(synthetic: tuple[Path, dict], tmp_path: Path) -> None:
    base, faults = synthetic
    assert {f["kind"] for f in faults} == set(FAULT_REASONS), "every fault kind is exercised"
    out = tmp_path / "shards"
    report = run_preprocess(plan_preprocess(_synthetic_config(base)), out)
    named: dict[int, set[str]] = {}
    for group in ("skipped", "degraded"):
        for reason, ids in report[group].items():
            for study_id in ids:
                named.setdefault(study_id, set()).add(reason)
    for fault in faults:
        reasons = named.get(int(fault["study_id"]), set())
        assert reasons & set(FAULT_REASONS[fault["kind"]]), (fault, reasons)
    rows = _all_rows(out)
    ids = [r["study_id"] for r in rows]
    assert len(ids) == len(set(ids))
    faulty = {int(f["study_id"]) for f in faults}
    truth = [json.loads(line) for line in (base / "ground_truth.jsonl").read_text().splitlines() if line]
    clean = {t["study_id"]: t for t in truth if t["study_id"] not in faulty
             and any(i["view"] in ("PA", "AP") for i in t["images"])}
    lateral_only = {t["study_id"] for t in truth if not any(i["view"] in ("PA", "AP") for i in t["images"])}
    assert set(clean) <= set(ids)
    assert set(report["skipped"].get("lateral_only", [])) == lateral_only - faulty
    assert report["studies_kept"] == len(ids) and report["studies_total"] == len(truth)
    by_id = {r["study_id"]: r for r in rows}
    for study_id, t in clean.items():
        row = by_id[study_id]
        assert row["split"] == t["split"] and row["subject_id"] == t["subject_id"]
        assert {name: row[name] for name in CHEXPERT_LABELS} == t["labels"]
        views = {i["dicom_id"]: i for i in t["images"]}
        frontal = views[row["frontal_dicom_id"]]
        assert frontal["view"] == row["frontal_view"]
        assert (row["frontal_orig_width"], row["frontal_orig_height"]) == (frontal["width"], frontal["height"])
        laterals = [i for i in t["images"] if i["view"] in ("LATERAL", "LL")]
        assert (row["lateral_dicom_id"] is None) == (not laterals)
        assert row["text"] and row["text"] == row["text"].lower()
    assert (out / "grounding.parquet").is_file() and (out / "class_retrieval.parquet").is_file()


@pytest.mark.slow
def test_synthetic_sharded_and_deterministic(synthetic: tuple[Path, dict], tmp_path: Path) -> None:
    base, _ = synthetic
    full = tmp_path / "full"
    report = run_preprocess(plan_preprocess(_synthetic_config(base)), full)
    again = tmp_path / "again"
    assert run_preprocess(plan_preprocess(_synthetic_config(base, workers=2)), again) == report
    for part in sorted(full.rglob("*.parquet")):
        assert part.read_bytes() == (again / part.relative_to(full)).read_bytes(), part
    parts, rows = [], []
    for index in range(3):
        out = tmp_path / f"part{index}"
        parts.append(run_preprocess(plan_preprocess(_synthetic_config(base, num_shards=3, shard_index=index)), out))
        rows += _all_rows(out)
    assert merge_reports(parts) == report
    assert sorted(rows, key=lambda r: r["study_id"]) == _all_rows(full)


def test_work_in_flight_is_bounded(root: tuple[Path, Path]) -> None:
    """Units are pulled only a bounded window ahead of the results handed back, so memory
    does not grow with the number of studies."""
    from limitr.data.mimic import ReportSource, StudyPlan
    from limitr.data.preprocess import ordered_map

    pulled = 0

    def units():
        nonlocal pulled
        for i in range(400):
            pulled += 1
            yield StudyPlan(10000000 + i, 50000000 + i, None, (), (), (None,) * 14, skip="not_in_split")

    init = (root[0], ReportSource(root[1]), SIZE)
    ahead = []
    for k, outcome in enumerate(ordered_map(units(), 2, init, chunk_size=4, window_per_worker=2), start=1):
        assert outcome.key == 50000000 + k - 1 and outcome.skipped == "not_in_split"
        ahead.append(pulled - k)
    assert k == 400 and max(ahead) <= 2 * 2 * 4 + 4


@pytest.mark.parametrize("height, width", [(1, 1), (2, 7), (64, 64), (33, 50)])
def test_png_encoding_is_lossless(height: int, width: int) -> None:
    from limitr.data.images import encode_png

    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width), dtype=np.uint8)
    png = encode_png(Image.fromarray(pixels, mode="L"))
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.mode == "L"
        assert np.array_equal(np.asarray(img), pixels)
