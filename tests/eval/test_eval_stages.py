"""`limitr embed` and `limitr evaluate` on tiny tables: every metrics file and plot, figures
equal to the metrics computed directly, skipped tasks, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import stages.embed  # noqa: F401  (registers the command)
import stages.evaluate  # noqa: F401
from eval_fixtures import CROP, StubModel, write_run_config, write_tables
from limitr.eval import metrics as M
from limitr.eval.prompts import CLASS_PROMPTS
from limitr.eval.store import read_embeddings
from stages.cli import app

runner = CliRunner()


def write_params(root: Path, **evaluate) -> Path:
    params = {
        "base": {"device": "cpu"},
        "embed": {"model": str(root / "model"), "shards": str(root / "shards"), "tokens": str(root / "tokens"),
                  "out": str(root / "emb"), "batch_size": 4, "rows_per_file": 6},
        "evaluate": {"embeddings": str(root / "emb"), "model": str(root / "model"), "shards": str(root / "shards"),
                     "metrics": str(root / "metrics"), "plots": str(root / "metrics" / "plots"),
                     "block_size": 4, "rerank_top_k": None, "score_block": 3, "ground_truth": None, **evaluate},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def stubbed(monkeypatch, tmp_path: Path):
    """Both stages load the stand-in model instead of a checkpoint."""
    import limitr.eval.embed as embed_lib

    model = StubModel().eval()
    write_run_config(tmp_path / "model")
    monkeypatch.setattr(embed_lib, "load_model", lambda folder, device: (model, json.loads((tmp_path / "model" / "config.json").read_text())))
    return model


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_embed_and_evaluate_write_every_output(tmp_path: Path, stubbed: StubModel) -> None:
    write_tables(tmp_path)
    truth = tmp_path / "ground_truth.jsonl"
    findings = [[{"type": "pleural_effusion", "side": "left", "zone": "basal", "size": "small", "certainty": "definite"}],
                [{"type": "nodule", "side": "right", "zone": "upper", "size": None, "certainty": "definite"}], []]
    truth.write_text("".join(json.dumps({"study_id": 50000000 + i, "images": [{"view": "PA"}, {"view": "LATERAL"}],
                                         "findings": findings[i % 3]}) + "\n" for i in range(10)))
    params = write_params(tmp_path, rerank_top_k=3, ground_truth=str(truth))
    invoke("embed", "--params", str(params))
    report = json.loads((tmp_path / "emb" / "report.json").read_text())
    assert set(report["tables"]) == {"test", "grounding", "class_retrieval", "prompts"}
    assert report["settings"]["crop_size"] == CROP
    result = invoke("evaluate", "--params", str(params))
    assert "retrieval full r_sum" in result.output

    metrics = tmp_path / "metrics"
    retrieval = json.loads((metrics / "retrieval.json").read_text())
    _, images = read_embeddings(tmp_path / "emb" / "test", "images")
    _, texts = read_embeddings(tmp_path / "emb" / "test", "texts")
    with torch.no_grad():
        scores = stubbed.similarity(images, texts)
    want = M.image_text_retrieval(scores.total)
    for d in ("i2t", "t2i"):
        for k in ("R@1", "R@5", "R@10", "medR", "meanR", "MRR"):
            assert retrieval["full"][d][k] == pytest.approx(want[d][k], abs=1e-6)
    assert retrieval["full"]["n_candidates"] == 10
    block = M.blockwise_retrieval(scores.total, 4)
    assert retrieval["block4"]["r_sum"] == pytest.approx(block["r_sum"])
    assert retrieval["block4"]["n_blocks"] == 2 and retrieval["block4"]["n_studies_dropped"] == 2
    assert retrieval["rerank"]["top_k"] == 3 and "full" in retrieval["rerank"]
    assert set(retrieval["by_score"]) == {"global", "local"}

    # the headline figures: the one file `dvc metrics show` reads, every key filled
    from stages.evaluate import SUMMARY_KEYS

    summary = json.loads((metrics / "summary.json").read_text())
    assert list(summary) == list(SUMMARY_KEYS)
    assert summary["i2t_R@1"] == pytest.approx(want["i2t"]["R@1"], abs=0.005)
    assert summary["r_sum"] == pytest.approx(retrieval["full"]["r_sum"], abs=0.005)
    assert summary["block_r_sum"] == pytest.approx(retrieval["block4"]["r_sum"], abs=0.005)
    class_p5 = json.loads((metrics / "class_retrieval.json").read_text())["t2i"]["P@5"]["mean"]
    assert summary["P@5"] == pytest.approx(class_p5, abs=0.005)
    for key in SUMMARY_KEYS:
        if key != "best_epoch":  # the stand-in model has no training history
            assert isinstance(summary[key], float), key
    assert summary["r_sum_lo"] <= summary["r_sum"] <= summary["r_sum_hi"]
    assert retrieval["full"]["ci95"]["samples"] == 1000 and "ci95" in retrieval["by_score"]["local"]
    # every study's ranks: the figures follow from them
    from limitr.eval.bootstrap import MARGINS_FILE, RANKS_FILE, read_per_study_tsv

    keys, ranks = read_per_study_tsv(metrics / RANKS_FILE)
    assert len(keys) == 10 and set(ranks) == {f"{d}_{s}" for d in ("i2t", "t2i") for s in ("total", "global", "local")}
    assert M.rank_metrics(ranks["t2i_total"])["R@5"] == pytest.approx(retrieval["full"]["t2i"]["R@5"])
    assert M.rank_metrics(ranks["i2t_global"])["MRR"] == pytest.approx(retrieval["by_score"]["global"]["i2t"]["MRR"])
    zs_keys, margins = read_per_study_tsv(metrics / MARGINS_FILE)
    assert len(zs_keys) == 10 and all(c.endswith((":margin", ":label")) for c in margins)

    cr = json.loads((metrics / "class_retrieval.json").read_text())
    assert set(cr["t2i"]) == {"P@5", "P@10"} and set(cr["i2t"]) == {"P@5", "P@10"}  # 10 items: no P@50
    assert set(cr["t2i"]["P@5"]) == {"mean", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}
    assert cr["source"] == "MIMIC-CXR 5x200"
    # text-to-image by hand: each class's prompts scored against every image, averaged
    _, cr_images = read_embeddings(tmp_path / "emb" / "class_retrieval", "images")
    prompts = json.loads((tmp_path / "emb" / "prompts" / "prompts.json").read_text())
    _, prompt_texts = read_embeddings(tmp_path / "emb" / "prompts", "texts")
    with torch.no_grad():
        s = stubbed.similarity(cr_images, prompt_texts).total
    item_class = [["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"][i % 5] for i in range(10)]
    for cls in CLASS_PROMPTS:
        cols = [prompts.index(p) for p in CLASS_PROMPTS[cls]]
        col = s[:, cols].mean(1).tolist()
        order = sorted(range(10), key=lambda j: (-col[j], item_class[j] == cls, j))
        assert cr["t2i"]["P@5"][cls] == pytest.approx(100.0 * sum(item_class[j] == cls for j in order[:5]) / 5)

    zs = json.loads((metrics / "zero_shot.json").read_text())
    assert zs["counts"]["Pleural Effusion"] == {"n_positive": 5, "n_negative": 5, "n_uncertain": 0}
    assert zs["counts"]["Cardiomegaly"]["n_uncertain"] == 3
    assert 0.0 <= zs["auroc"]["Pleural Effusion"] <= 1.0 and zs["auroc"]["mean"] is not None
    assert "Atelectasis" in zs["skipped_classes"]  # no positive study in the tiny split

    probes = json.loads((metrics / "probes.json").read_text())
    assert probes["side"]["n"] == {"total": 7, "pleural_effusion": 4, "nodule": 3}
    assert probes["zone"]["n"] == {"total": 3, "nodule": 3}
    assert probes["effusion"]["n"]["small"] == {"positive": 4, "negative": 6}
    assert 0.0 <= probes["side"]["accuracy"]["mean"] <= 1.0
    assert "probe side / zone accuracy" in result.output

    gr = json.loads((metrics / "grounding.json").read_text())
    for name in ("cnr", "miou", "miou_over_thresholds", "pointing_game"):
        assert set(gr[name]) == {"mean", "Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax"}
        assert name in gr["cosine"]
    assert gr["n_phrases"]["total"] == 5 and gr["n_phrases"]["Pleural Effusion"] == 2
    for entry in (gr, gr["cosine"]):
        assert set(entry["prior"]) == {"map", "cnr", "miou", "miou_over_thresholds", "pointing_game"}
        assert set(entry["prior"]["pointing_game"]) == set(entry["pointing_game"])
        sig = entry["significance"]
        assert sig["phrases"] == 5 and sig["map_only"] + sig["prior_only"] <= 5
        assert 0.0 < sig["p_vs_chance"] <= 1.0 and 0.0 < sig["p_vs_prior"] <= 1.0
    assert "its prior map" in result.output and "pointing hits: map / chance / prior" in result.output

    plots = metrics / "plots"
    lines = (plots / "recall_at_k.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["k", "i2t", "t2i", "i2t_block4", "t2i_block4"]
    assert len(lines) == 1 + 10  # K = 1..n; within blocks of 4, R@K is 100 from K = 4 on
    assert lines[4].split("\t")[3:] == ["100.0000", "100.0000"]
    assert (plots / "precision_at_k.tsv").read_text().splitlines()[0].split("\t") == ["k", "t2i", "i2t"]
    pngs = sorted(p.name for p in (plots / "grounding").iterdir())
    assert pngs == ["cardiomegaly.png", "edema.png", "pleural_effusion.png", "pneumothorax.png"]
    for p in (plots / "grounding").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_absent_tables_write_skipped_metrics(tmp_path: Path, stubbed: StubModel) -> None:
    write_tables(tmp_path, grounding=False, class_retrieval=False)
    params = write_params(tmp_path)
    invoke("embed", "--params", str(params))
    result = invoke("evaluate", "--params", str(params))
    assert "skipped" in result.output
    metrics = tmp_path / "metrics"
    for name in ("grounding", "class_retrieval"):
        data = json.loads((metrics / f"{name}.json").read_text())
        assert list(data) == ["skipped"] and name in data["skipped"]
    assert "full" in json.loads((metrics / "retrieval.json").read_text())
    assert "auroc" in json.loads((metrics / "zero_shot.json").read_text())
    assert "ground truth" in json.loads((metrics / "probes.json").read_text())["skipped"]
    summary = json.loads((metrics / "summary.json").read_text())
    assert summary["P@5"] is None and summary["cnr"] is None and summary["r_sum"] is not None
    assert [p.name for p in (metrics / "plots" / "grounding").iterdir()] == ["skipped.png"]
    assert (metrics / "plots" / "precision_at_k.tsv").read_text().strip() == "k\tt2i\ti2t"  # header only


def test_ground_truth_of_another_data_set_is_skipped_and_a_missing_one_is_an_error(tmp_path: Path, stubbed: StubModel) -> None:
    write_tables(tmp_path)
    truth = tmp_path / "ground_truth.jsonl"
    truth.write_text(json.dumps({"study_id": 1, "images": [], "findings": []}) + "\n")  # no test study
    params = write_params(tmp_path, ground_truth=str(truth))
    invoke("embed", "--params", str(params))
    invoke("evaluate", "--params", str(params))
    skipped = json.loads((tmp_path / "metrics" / "probes.json").read_text())["skipped"]
    assert "0 of the 10 test studies" in skipped and "null" in skipped
    result = runner.invoke(app, ["evaluate", "--params", str(params), "--ground-truth", str(tmp_path / "absent.jsonl")])
    assert result.exit_code == 1 and "absent.jsonl does not exist" in result.output
    assert "Traceback" not in result.output


def test_missing_embeddings_is_one_line_error(tmp_path: Path, stubbed: StubModel) -> None:
    params = write_params(tmp_path)
    result = runner.invoke(app, ["evaluate", "--params", str(params)])
    assert result.exit_code == 1
    assert "embed stage" in result.output and "Traceback" not in result.output


def test_grounding_prior_scores_as_a_map_that_ignores_phrase_and_image(
    tmp_path: Path, stubbed: StubModel, monkeypatch
) -> None:
    """The prior is the mean of the phrases' maps, scored against each phrase's boxes; when
    every phrase gets the same attention map, that map is its own prior (the same figures)."""
    write_tables(tmp_path)
    params = write_params(tmp_path)
    invoke("embed", "--params", str(params))
    invoke("evaluate", "--params", str(params))
    varying = json.loads((tmp_path / "metrics" / "grounding.json").read_text())

    def fixed_maps(img, txt):
        m = img.local.shape[1]
        row = torch.linspace(0.0, 3.0, m).roll(m // 3).softmax(0)
        return row.expand(txt.local.shape[0], txt.local.shape[1], m).clone()

    # The prior is the mean of the phrases' maps, scored against each phrase's own boxes.
    import pyarrow.parquet as pq

    from limitr.eval import grounding as G
    from limitr.data.images import Geometry
    from limitr.eval.store import read_manifest
    from limitr.eval.grounding_task import _png_side, phrase_maps
    from limitr.eval.scoring import take
    from limitr.eval.store import align

    folder = tmp_path / "emb" / "grounding"
    img_keys, images = read_embeddings(folder, "images")
    txt_keys, texts = read_embeddings(folder, "texts")
    keys, img_rows, txt_rows = align(img_keys, txt_keys)
    attention, _ = phrase_maps(stubbed, take(images, img_rows), take(texts, txt_rows), 2, "cpu")
    crop = int(read_manifest(tmp_path / "emb")["settings"]["crop_size"])
    table = pq.read_table(tmp_path / "shards" / "grounding.parquet").to_pylist()
    by_id = {row["phrase_id"]: row for row in table}
    per_category: dict[str, list] = {}
    for key in keys.tolist():
        row = by_id[int(key)]
        geometry = Geometry(orig_height=row["orig_height"], orig_width=row["orig_width"], scale=row["scale"],
                                   pad_left=row["pad_left"], pad_top=row["pad_top"],
                                   image_size=_png_side(row["image"]), crop_size=crop)
        score = G.score_phrase(G.map_to_original(attention.mean(0), geometry), row["boxes"])
        per_category.setdefault(row["category_name"], []).append(score)
    for category, scores in per_category.items():
        assert varying["prior"]["pointing_game"][category] == pytest.approx(np.mean([s.pointing for s in scores]))
        assert varying["prior"]["cnr"][category] == pytest.approx(np.nanmean([s.cnr for s in scores]))

    monkeypatch.setattr(stubbed, "grounding_maps", fixed_maps)
    invoke("evaluate", "--params", str(params))
    gr = json.loads((tmp_path / "metrics" / "grounding.json").read_text())
    for name in ("cnr", "miou", "miou_over_thresholds", "pointing_game"):
        assert gr["prior"][name].keys() == gr[name].keys()
        for key, value in gr[name].items():
            assert gr["prior"][name][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
    assert any(varying["prior"]["cnr"][k] != pytest.approx(varying["cnr"][k]) for k in varying["cnr"])
    # A map that is its own prior wins and loses no phrase against it.
    sig = gr["significance"]
    assert sig["map_only"] == sig["prior_only"] == 0 and sig["p_vs_prior"] == 1.0
    assert sig["hits"] == sig["prior_hits"] and sig["cnr_minus_prior"] == pytest.approx(0.0, abs=1e-5)


def test_stages_with_the_real_model(tmp_path: Path) -> None:
    """The real LIMITR from a saved checkpoint, end to end on the tiny tables."""
    from limitr.model import LIMITR, ModelConfig

    torch.manual_seed(0)
    LIMITR(ModelConfig(embed_dim=16, text_freeze_layers=-1, score_chunk=4)).save_pretrained(tmp_path / "model" / "best")
    write_run_config(tmp_path / "model", crop=32)
    write_tables(tmp_path, n_test=6, n_ground=3, n_class=5)
    params = write_params(tmp_path)
    invoke("embed", "--params", str(params))
    invoke("evaluate", "--params", str(params))
    retrieval = json.loads((tmp_path / "metrics" / "retrieval.json").read_text())
    assert retrieval["full"]["n_candidates"] == 6
    gr = json.loads((tmp_path / "metrics" / "grounding.json").read_text())
    assert np.isfinite(gr["pointing_game"]["mean"])
    assert gr["map"] == "word_to_region_attention"


def test_grounding_miou_threshold_is_chosen_on_validation_phrases(tmp_path: Path, stubbed: StubModel) -> None:
    """Phrases whose study is in the validation split choose the headline mIoU's threshold and
    are left out of that mIoU; every other grounding figure still covers all phrases."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from limitr.eval import grounding as G

    write_tables(tmp_path)
    params = write_params(tmp_path)
    invoke("embed", "--params", str(params))
    invoke("evaluate", "--params", str(params))
    before = json.loads((tmp_path / "metrics" / "grounding.json").read_text())
    assert before["miou_threshold"] == {"value": G.FIXED_THRESHOLD, "chosen_on": "fixed", "n_phrases": 0}

    path = tmp_path / "shards" / "grounding.parquet"
    table = pq.read_table(path)
    study = [60000000 if i in (0, 3) else None for i in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("study_id"), "study_id", pa.array(study, pa.int64()))
    pq.write_table(table, path)
    (tmp_path / "shards" / "validate").mkdir()
    pq.write_table(pa.table({"study_id": pa.array([60000000], pa.int64())}), tmp_path / "shards" / "validate" / "part-00000.parquet")
    invoke("evaluate", "--params", str(params))
    after = json.loads((tmp_path / "metrics" / "grounding.json").read_text())

    for entry_before, entry_after in ((before, after), (before["cosine"], after["cosine"])):
        choice = entry_after["miou_threshold"]
        assert choice["chosen_on"] == "validation" and choice["n_phrases"] == 2
        assert choice["value"] in entry_after["thresholds"]
        for name in ("cnr", "miou_over_thresholds", "pointing_game", "pointing_game_chance", "n_phrases"):
            assert entry_after[name] == entry_before[name]
        assert entry_after["significance"] == entry_before["significance"]
    # Phrase 3 is the only Pneumothorax phrase: none is left to average; phrase 0 leaves phrase 2.
    assert table.column("category_name").to_pylist()[3] == "Pneumothorax"
    assert after["miou"]["Pneumothorax"] is None and after["miou"]["Pleural Effusion"] is not None
    assert before["miou"]["Pneumothorax"] is not None


def test_summary_names_the_best_epoch_and_leaves_skipped_figures_null(tmp_path: Path) -> None:
    from stages.evaluate import SUMMARY_KEYS, headline_figures

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "metrics.json").write_text(json.dumps({"epoch": 3, "r_sum": 12.0}))
    summary = headline_figures({"retrieval": {"skipped": "no test split"}}, "block1000", tmp_path)
    assert list(summary) == list(SUMMARY_KEYS) and summary["best_epoch"] == 3
    assert all(summary[k] is None for k in SUMMARY_KEYS if k != "best_epoch")
