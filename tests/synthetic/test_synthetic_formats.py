"""The synthetic data set's files: layout, columns, identifiers, reports, labels, the
evaluation tables and the ground truth, read back with pandas, zipfile and PIL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from limitr.data.schema import CHEXPERT_LABELS, CLASS_RETRIEVAL_CLASSES, MS_CXR_CATEGORIES
from limitr.synthetic import generate
from limitr.synthetic.findings import FINDING_TYPES
from synthetic_helpers import image_file, keyword_labels, model_text, read_reports, report_member, sections

META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
        "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"]
LABELS = ["subject_id", "study_id", *CHEXPERT_LABELS]
N_STUDIES = 80


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "set"
    summary = generate(out, n_studies=N_STUDIES, seed=6, image_scale=0.06, workers=1)
    assert summary["studies"] == N_STUDIES
    return out


def _csv(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "mimic-cxr-jpg" / name, dtype=str, keep_default_na=False, na_values=[""])


def _truth(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "ground_truth.jsonl").read_text().splitlines()]


def test_layout(root: Path) -> None:
    names = {p.name for p in root.iterdir()}
    assert names == {"mimic-cxr-jpg", "mimic-cxr-reports.zip", "ms-cxr", "chexpert_5x200.csv", "ground_truth.jsonl"}
    assert (root / "ms-cxr" / "MS_CXR_Local_Alignment_v1.1.0.csv").is_file()
    jpg = {p.name for p in (root / "mimic-cxr-jpg").iterdir()}
    assert jpg == {"files", *(f"mimic-cxr-2.0.0-{k}.csv.gz" for k in ("metadata", "split", "chexpert", "negbio"))}


def test_csv_columns_and_conventions(root: Path) -> None:
    meta = _csv(root, "mimic-cxr-2.0.0-metadata.csv.gz")
    assert list(meta.columns) == META
    split = _csv(root, "mimic-cxr-2.0.0-split.csv.gz")
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    for name in ("chexpert", "negbio"):
        labels = _csv(root, f"mimic-cxr-2.0.0-{name}.csv.gz")
        assert list(labels.columns) == LABELS
        values = {v for v in labels[list(CHEXPERT_LABELS)].to_numpy().ravel() if isinstance(v, str)}
        assert values <= {"1.0", "0.0", "-1.0"} and "-1.0" in values
        assert len(labels) == N_STUDIES and labels["study_id"].is_unique
    assert set(meta["ViewPosition"]) <= {"PA", "AP", "LATERAL", "LL"}
    assert {"PA", "AP", "LATERAL", "LL"} <= set(meta["ViewPosition"])
    assert set(split["split"]) == {"train", "validate", "test"}
    assert meta["StudyDate"].str.fullmatch(r"2[12]\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])").all()
    assert meta["StudyTime"].str.fullmatch(r"\d{1,6}\.\d{1,3}").all()
    assert list(meta["dicom_id"]) == list(split["dicom_id"])
    # one date and time per study
    assert (meta.groupby("study_id")[["StudyDate", "StudyTime"]].nunique() == 1).all().all()


def test_identifier_patterns_and_paths(root: Path) -> None:
    meta = _csv(root, "mimic-cxr-2.0.0-metadata.csv.gz")
    assert meta["subject_id"].str.fullmatch(r"1\d{7}").all()
    assert meta["study_id"].str.fullmatch(r"5\d{7}").all()
    assert meta["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()
    assert meta["dicom_id"].is_unique
    files = sorted((root / "mimic-cxr-jpg" / "files").rglob("*.jpg"))
    assert len(files) == len(meta)
    pattern = re.compile(r"files/p(1\d)/p(1\d{7})/s(5\d{7})/([0-9a-f-]{44})\.jpg")
    for path in files:
        m = pattern.fullmatch(str(path.relative_to(root / "mimic-cxr-jpg")))
        assert m and m.group(2).startswith(m.group(1)), path


def test_images_match_metadata(root: Path) -> None:
    meta = _csv(root, "mimic-cxr-2.0.0-metadata.csv.gz")
    sizes = []
    for row in meta.itertuples():
        with Image.open(image_file(root, int(row.subject_id), int(row.study_id), row.dicom_id)) as im:
            assert im.format == "JPEG" and im.mode == "L"
            assert im.size == (int(row.Columns), int(row.Rows))
            sizes.append(im.size)
    assert len(set(sizes)) > len(sizes) // 2, "image sizes should vary"
    assert all(w != h for w, h in sizes)
    # about 0.06 of 2544 x 3056 (portable films may be landscape)
    assert all(100 < min(w, h) and max(w, h) < 220 for w, h in sizes)


def test_splits_are_by_patient_and_sized(root: Path) -> None:
    split = _csv(root, "mimic-cxr-2.0.0-split.csv.gz")
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()
    studies = split.drop_duplicates("study_id")["split"].value_counts()
    assert studies["test"] >= 0.1 * N_STUDIES and studies["validate"] >= 0.1 * N_STUDIES
    assert studies["train"] >= 0.6 * N_STUDIES
    per_patient = split.drop_duplicates("study_id").groupby("subject_id").size()
    assert per_patient.max() > 1 and per_patient.min() == 1


def test_study_structure(root: Path) -> None:
    truth = _truth(root)
    views = [[i["view"] for i in t["images"]] for t in truth]
    frontal = [sum(v in ("PA", "AP") for v in vs) for vs in views]
    lateral = [sum(v in ("LATERAL", "LL") for v in vs) for vs in views]
    assert any(f == 2 for f in frontal), "some studies have two frontal images"
    assert any(f >= 1 and lat == 0 for f, lat in zip(frontal, lateral)), "some studies have no lateral"
    assert any(f == 0 and lat >= 1 for f, lat in zip(frontal, lateral)), "a few studies are lateral only"
    normal = sum(t["normal"] for t in truth) / len(truth)
    assert 0.2 < normal < 0.5


def test_reports_layout_and_sections(root: Path) -> None:
    reports = read_reports(root)
    truth = _truth(root)
    assert set(reports) == {report_member(t["subject_id"], t["study_id"]) for t in truth}
    styles = {"FINDINGS+IMPRESSION": 0, "IMPRESSION only": 0, "FINDINGS only": 0, "CONCLUSION": 0, "addendum": 0}
    for name, data in reports.items():
        text = data.decode("utf-8")
        lines = text.rstrip("\n").split("\n")
        assert lines[0].strip() in ("FINAL REPORT", "ADDENDUM") and lines[0].startswith(" " * 20)
        if lines[0].strip() == "ADDENDUM":  # the addendum comes first, then a line of underscores
            styles["addendum"] += 1
            separator = next(i for i, line in enumerate(lines) if set(line.strip()) == {"_"})
            assert lines[separator + 1].strip() == "FINAL REPORT"
        assert all(line.startswith(" ") for line in lines), name
        assert all(len(line) <= 79 for line in lines), name
        assert "___" in text
        parts = sections(text)
        assert "EXAMINATION" in parts and ("INDICATION" in parts or "HISTORY" in parts)
        assert {"FINDINGS", "IMPRESSION", "CONCLUSION"} & set(parts), name
        if "FINDINGS" in parts and "IMPRESSION" in parts:
            styles["FINDINGS+IMPRESSION"] += 1
        if "IMPRESSION" in parts and "FINDINGS" not in parts:
            styles["IMPRESSION only"] += 1
        if "FINDINGS" in parts and not {"IMPRESSION", "CONCLUSION"} & set(parts):
            styles["FINDINGS only"] += 1
        styles["CONCLUSION"] += "CONCLUSION" in parts
        assert model_text(text)
    assert all(styles.values()), styles


def test_reports_parse_with_the_pipeline_reader(root: Path) -> None:
    from limitr.data.reports import parse_report

    for name, data in read_reports(root).items():
        parsed = parse_report(data.decode("utf-8"))
        assert parsed.text_source in ("findings+impression", "findings", "impression"), name
        assert parsed.model_text


def test_labels_agree_with_report_text(root: Path) -> None:
    labels = _csv(root, "mimic-cxr-2.0.0-chexpert.csv.gz").set_index("study_id")
    reports = read_reports(root)
    checked = 0
    for t in _truth(root):
        text = reports[report_member(t["subject_id"], t["study_id"])].decode("utf-8")
        expected = keyword_labels(text)
        row = labels.loc[str(t["study_id"])]
        got = {n: (None if pd.isna(row[n]) else float(row[n])) for n in CHEXPERT_LABELS}
        assert got == expected, (t["study_id"], text)
        assert got == t["labels"]
        checked += 1
    assert checked == N_STUDIES


def test_findings_words_in_reports(root: Path) -> None:
    """Each definite finding's phrase is in the report and names its side and size."""
    reports = read_reports(root)
    for t in _truth(root):
        text = re.sub(r"\s+", " ", reports[report_member(t["subject_id"], t["study_id"])].decode("utf-8"))
        for f in t["findings"]:
            if f["phrase"] is None:
                continue
            assert f["phrase"] in text
            phrase = f["phrase"].lower()
            if f["type"] in ("pleural_effusion", "pneumothorax", "nodule", "mass") and f["side"] != "bilateral":
                assert f["side"] in phrase, (f, phrase)
            if f["type"] == "nodule":
                assert f"{f['size_mm']} mm" in phrase


def test_ms_cxr_table(root: Path) -> None:
    ms = pd.read_csv(root / "ms-cxr" / "MS_CXR_Local_Alignment_v1.1.0.csv")
    assert list(ms.columns) == ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                                "image_width", "image_height", "split"]
    assert len(ms) > 0 and set(ms["category_name"]) <= set(MS_CXR_CATEGORIES)
    assert set(ms["split"]) == {"test"}
    meta = _csv(root, "mimic-cxr-2.0.0-metadata.csv.gz").set_index("dicom_id")
    split = _csv(root, "mimic-cxr-2.0.0-split.csv.gz").set_index("dicom_id")
    reports = read_reports(root)
    for row in ms.itertuples():
        assert meta.loc[row.dicom_id, "ViewPosition"] in ("PA", "AP")
        assert split.loc[row.dicom_id, "split"] == "test"
        with Image.open(root / "mimic-cxr-jpg" / row.path) as im:
            assert im.size == (row.image_width, row.image_height)
        assert 0 <= row.x and 0 <= row.y and row.w > 0 and row.h > 0
        assert row.x + row.w <= row.image_width and row.y + row.h <= row.image_height
        m = meta.loc[row.dicom_id]
        text = reports[report_member(int(m["subject_id"]), int(m["study_id"]))].decode("utf-8")
        assert row.label_text in re.sub(r"\s+", " ", text)


def test_chexpert_5x200_table(root: Path) -> None:
    table = pd.read_csv(root / "chexpert_5x200.csv")
    assert list(table.columns) == ["Path", *CHEXPERT_LABELS]
    assert len(table) > 0
    meta = _csv(root, "mimic-cxr-2.0.0-metadata.csv.gz").set_index("dicom_id")
    split = _csv(root, "mimic-cxr-2.0.0-split.csv.gz").set_index("dicom_id")
    assert table["Path"].is_unique
    for row in table.itertuples(index=False):
        assert (root / "mimic-cxr-jpg" / row.Path).is_file()
        dicom = Path(row.Path).stem
        assert meta.loc[dicom, "ViewPosition"] in ("PA", "AP") and split.loc[dicom, "split"] == "test"
        values = dict(zip(CHEXPERT_LABELS, row[1:]))
        positive = [c for c in CLASS_RETRIEVAL_CLASSES if values[c] == 1.0]
        assert len(positive) == 1
        others = [n for n in CHEXPERT_LABELS if n not in (positive[0], "No Finding")]
        assert all(values[n] == 0.0 for n in others)


def test_ground_truth_boxes_and_sides(root: Path) -> None:
    truth = _truth(root)
    assert len(truth) == N_STUDIES
    assert {f["type"] for t in truth for f in t["findings"]} <= set(FINDING_TYPES)
    sided = 0
    for t in truth:
        images = {i["dicom_id"]: i for i in t["images"]}
        for f in t["findings"]:
            assert set(f) >= {"type", "side", "zone", "size", "grade", "device", "boxes", "certainty"}
            for dicom, boxes in f["boxes"].items():
                im = images[dicom]
                for x, y, w, h in boxes:
                    assert 0 <= x and 0 <= y and w > 0 and h > 0
                    assert x + w <= im["width"] and y + h <= im["height"]
                # radiological convention: the patient's left is on the image's right
                if im["view"] in ("PA", "AP") and f["side"] in ("left", "right") and f["type"] in (
                        "pleural_effusion", "pneumothorax", "consolidation", "nodule", "mass"):
                    centre = np.mean([x + w / 2 for x, y, w, h in boxes]) / im["width"]
                    assert (centre > 0.5) == (f["side"] == "left"), (f, centre)
                    sided += 1
            if f["type"] == "pleural_effusion" and f["size"] == "small":
                assert all(images[d]["view"] in ("LATERAL", "LL") for d in f["boxes"]), "small effusions: lateral only"
            if f["type"] == "pneumothorax":
                assert all(images[d]["view"] in ("PA", "AP") for d in f["boxes"])
    assert sided > 5
