"""IU X-ray (Kaggle and Open-i layouts) and CSV manifests as preprocess sources, on small
roots written in the real formats with hostile rows: every bad record named, the good ones
kept with the right text, views, labels and split; the split seeded and by patient; the
class-retrieval table from the test split; the stage writes split.csv; same seed, same bytes."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from limitr.data.iu import labels_from_mesh, model_text
from limitr.data.manifest import safe_relative
from limitr.data.preprocess import PreprocessConfig, plan_preprocess, run_preprocess
from limitr.data.schema import CHEXPERT_LABELS, CLASS_RETRIEVAL_SCHEMA, SPLITS, STUDY_SCHEMA
from limitr.data.shards import read_split, read_table
from limitr.data.sources import patient_splits, remove_placeholders
from limitr.errors import LimitrError
from source_fixtures import FINDINGS, KINDS, make_iu_kaggle, make_iu_openi, make_manifest

SIZE = 24


def _config(**kw) -> PreprocessConfig:
    return PreprocessConfig(mimic_root=Path("unused"), reports=Path("unused"), image_size=SIZE,
                            shard_size=7, ms_cxr=None, class_retrieval=None, **kw)


def _run(tmp_path: Path, name: str = "out", **kw) -> tuple[Path, dict]:
    out = tmp_path / name
    report = run_preprocess(plan_preprocess(_config(**kw)), out)
    return out, report


def _rows(out: Path) -> dict[int, dict]:
    rows = {}
    for split in SPLITS:
        for row in read_split(out, split).to_pylist():
            rows[row["study_id"]] = row
    return rows


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path, dict]:
    root = tmp_path_factory.mktemp("iu-kaggle")
    expected = make_iu_kaggle(root)
    out, report = _run(tmp_path_factory.mktemp("kaggle-out"), source="iu", iu_root=root)
    return root, expected, out, report


def test_kaggle_names_every_bad_record(kaggle) -> None:
    root, expected, out, report = kaggle
    assert report["skipped"] == expected["skipped"]
    assert {k: len(v) for k, v in report["rows_dropped"].items()} == expected["rows_dropped"]
    assert report["rows_read"] == report["rows_used"] + sum(len(v) for v in report["rows_dropped"].values())
    assert report["studies_kept"] == expected["good"] == len(_rows(out))
    assert report["studies_total"] == report["studies_kept"] + sum(len(v) for v in report["skipped"].values())
    assert report["source"]["layout"] == "kaggle" and report["source"]["view_source"] == "projections_table"
    assert report["source"]["report_rows_dropped"] == {"duplicate_uid": ["1"]}
    # the .jpg copies were found and named
    assert report["degraded"]["image_as_jpg"] == [u for u in range(1, 31) if u % 4 == 0]


def test_kaggle_rows_text_views_labels(kaggle) -> None:
    root, expected, out, report = kaggle
    rows = _rows(out)
    for uid, row in rows.items():
        kind = KINDS[uid % len(KINDS)]
        assert row["subject_id"] == row["study_id"] == uid
        assert "xxxx" not in row["text"] and row["text"].endswith("no acute disease.")
        assert row["findings"] == FINDINGS[kind]  # the section as given
        assert row["text_source"] == "findings+impression"
        assert row["frontal_view"] == "FRONTAL" and row["frontal_dicom_id"].endswith("-1001.dcm.png")
        assert (row["lateral_image"] is not None) == bool(uid % 3)
        labels = {n: row[n] for n in CHEXPERT_LABELS}
        if kind == "normal":
            assert labels["No Finding"] == 1.0 and sum(labels.values()) == 1.0
        if kind == "edema":
            assert labels["Edema"] == labels["Cardiomegaly"] == 1.0 and labels["No Finding"] == 0.0
    # 3 placeholders in the cardiomegaly findings, 1 in normal's, per study (indication not read)
    n_card = sum(1 for u in range(1, 31) if KINDS[u % 5] == "cardiomegaly")
    n_norm = sum(1 for u in range(1, 31) if KINDS[u % 5] == "normal")
    assert report["source"]["placeholders_removed"] == 2 * n_card + n_norm + 2  # + uid 36's "XXXX XXXX."
    tables = pq.read_schema(out / "train" / "part-00000.parquet")
    assert tables.equals(STUDY_SCHEMA)


def test_kaggle_same_seed_same_bytes_other_seed_other_split(kaggle, tmp_path: Path) -> None:
    root, _, out, _ = kaggle
    again, _ = _run(tmp_path, "again", source="iu", iu_root=root, workers=2)
    assert _digest(again) == _digest(out)
    other, _ = _run(tmp_path, "other", source="iu", iu_root=root, split_seed=1)
    splits = lambda o: {k: r["split"] for k, r in _rows(o).items()}  # noqa: E731
    assert splits(other) != splits(out)


def test_patient_split_is_seeded_sized_and_by_patient() -> None:
    patients = list(range(1000, 1100))
    a = patient_splits(patients, (0.7, 0.1, 0.2), seed=3)
    assert a == patient_splits(list(reversed(patients)), (0.7, 0.1, 0.2), seed=3)
    assert sorted(a) == patients
    counts = {s: sum(1 for v in a.values() if v == s) for s in SPLITS}
    assert counts == {"train": 70, "validate": 10, "test": 20}
    with pytest.raises(LimitrError, match="add"):
        patient_splits(patients, (0.5, 0.1, 0.1), seed=0)


def test_mesh_mapping_and_placeholders() -> None:
    labels = dict(zip(CHEXPERT_LABELS, labels_from_mesh("Hydropneumothorax/right;Nodule;Catheters, Indwelling")))
    assert labels["Pneumothorax"] == labels["Pleural Effusion"] == labels["Lung Lesion"] == 1.0
    assert labels["Support Devices"] == 1.0 and labels["No Finding"] == 0.0 and labels["Edema"] == 0.0
    assert labels_from_mesh("No Indexing") is None and labels_from_mesh("") is None
    assert dict(zip(CHEXPERT_LABELS, labels_from_mesh("normal;normal")))["No Finding"] == 1.0
    # a finding outside the table still rules out No Finding
    assert dict(zip(CHEXPERT_LABELS, labels_from_mesh("Calcified Granuloma")))["No Finding"] == 0.0
    assert remove_placeholders("No XXXX of XXXX. XXXXL stays") == ("No   of  . XXXXL stays", 2)
    text, n = model_text("XXXX XXXX.", None)
    assert text is None and n == 2


@pytest.mark.parametrize("as_tgz", [True, False])
def test_openi_layout_name_order(tmp_path: Path, as_tgz: bool) -> None:
    root = tmp_path / "openi"
    expected = make_iu_openi(root, as_tgz=as_tgz)
    out, report = _run(tmp_path, source="iu", iu_root=root)
    assert report["skipped"] == expected["skipped"]
    assert report["source"]["layout"] == "openi" and report["source"]["view_source"] == "name_order"
    assert report["rows_dropped"] == {"bad_filename": ["../../evil"]}
    rows = _rows(out)
    assert len(rows) == expected["good"]
    assert rows[2]["frontal_dicom_id"] == "CXR2_IM-0002-1001"  # the rule: first by name
    assert all("xxxx" not in r["text"] for r in rows.values())


def test_openi_views_from_the_kaggle_table(tmp_path: Path) -> None:
    root = tmp_path / "openi"
    make_iu_openi(root, with_projections=True)
    out, report = _run(tmp_path, source="iu", iu_root=root, iu_layout="openi")
    assert report["source"]["view_source"] == "projections_table"
    assert _rows(out)[2]["frontal_dicom_id"] == "CXR2_IM-0002-2001"  # the table's frontal


@pytest.mark.parametrize("with_split", [True, False])
def test_manifest_names_bad_rows_and_refuses_escapes(tmp_path: Path, with_split: bool) -> None:
    root = tmp_path / "archive"
    columns = {"study": "Accession", "text": "Report Text"}
    expected = make_manifest(root, with_split=with_split, columns=columns)
    out, report = _run(tmp_path, source="manifest", manifest=root / "manifest.csv",
                       manifest_columns=tuple(columns.items()))
    assert report["skipped"] == expected["skipped"]
    assert {k: len(v) for k, v in report["rows_dropped"].items()} == expected["rows_dropped"]
    rows = _rows(out)
    assert len(rows) == expected["good"]
    assert report["source"]["split_source"] == ("manifest" if with_split else "seeded_by_patient")
    if with_split:  # the manifest's split kept
        assert all(r["split"] == ["train", "train", "validate", "test"][(k - 500) % 4] for k, r in rows.items())
    by_patient: dict[int, set] = {}
    for r in rows.values():
        by_patient.setdefault(r["subject_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values()) and not report["source"]["patients_in_several_splits"]
    r = rows[501]
    assert r["frontal_view"] == "PA" and r["lateral_view"] == "LATERAL" and r["Pleural Effusion"] == 1.0
    assert r["text"] == "findings consistent with pleural effusion." and r["text_source"] == "report"


def test_manifest_column_missing_is_one_fatal_line(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    make_manifest(root)
    with pytest.raises(LimitrError, match="lacks the column"):
        plan_preprocess(_config(source="manifest", manifest=root / "manifest.csv",
                                manifest_columns=(("text", "Findings"),)))


@pytest.mark.parametrize("path, ok", [("a/b.png", True), ("../a.png", False), ("/etc/x", False),
                                      ("a/../../b", False), ("C:/x.png", False), ("a\\..\\..\\b", False)])
def test_safe_relative(path: str, ok: bool) -> None:
    assert safe_relative(path) is ok


def test_class_retrieval_from_the_test_split(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    make_manifest(root, n_good=40)
    out, report = _run(tmp_path, source="manifest", manifest=root / "manifest.csv")
    table = read_table(out / "class_retrieval.parquet")
    assert table.schema.equals(CLASS_RETRIEVAL_SCHEMA)
    test_ids = set(r["study_id"] for r in read_split(out, "test").to_pylist())
    items = table.to_pylist()
    assert items and set(i["study_id"] for i in items) == test_ids
    for item in items:
        assert item[item["class_name"]] == 1.0 and item["text"]
    assert report["class_retrieval"]["items_kept"] == len(items)


def test_stage_iu_writes_split_csv_and_one_line_errors(tmp_path: Path) -> None:
    from stages.app import app

    root = tmp_path / "iu"
    make_iu_kaggle(root, n_good=12)
    params = tmp_path / "params.yaml"
    params.write_text(f"preprocess:\n  source: iu\n  iu_root: {root}\n  out: {tmp_path / 'shards'}\n"
                      "  image_size: 16\n  workers: 1\n  split_fractions: [0.5, 0.25, 0.25]\n")
    result = CliRunner().invoke(app, ["preprocess", "--params", str(params)])
    assert result.exit_code == 0, result.output
    with (tmp_path / "shards" / "split.csv").open() as f:
        split_rows = list(csv.DictReader(f))
    rows = _rows(tmp_path / "shards")
    listed = {int(r["study_id"]): r["split"] for r in split_rows}
    assert all(listed[k] == r["split"] for k, r in rows.items())
    report = json.loads((tmp_path / "shards" / "report.json").read_text())
    assert report["source"]["split_fractions"] == [0.5, 0.25, 0.25]
    # fatal: not an IU root; source iu without a root
    (tmp_path / "empty").mkdir()
    for args in (["--iu-root", str(tmp_path / "empty")], ["--iu-root", str(tmp_path / "nowhere")]):
        result = CliRunner().invoke(app, ["preprocess", "--params", str(params), *args,
                                          "--out", str(tmp_path / "x")])
        lines = [line for line in result.output.strip().splitlines() if line]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    params.write_text("preprocess:\n  source: iu\n")
    result = CliRunner().invoke(app, ["preprocess", "--params", str(params)])
    assert result.exit_code == 1 and "iu_root" in result.output
