"""Evaluation across sources (`limitr transfer`) on two small sources: a model of an IU X-ray
(Kaggle layout) run scored on a CSV manifest's test split. The figures equal those of the
plain chain (the target tokenized with the model's tokenizer and limit, `limitr embed`,
`limitr evaluate`); the tokenizer and token limit are the model's, not a default; a target at
another image size is one line naming the fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "data"))

from source_fixtures import make_iu_kaggle, make_manifest  # noqa: E402

SIZE, CROP, LIMIT = 40, 32, 24


def _preprocess(out: Path, size: int = SIZE, **kw) -> Path:
    from limitr.data.preprocess import PreprocessConfig, plan_preprocess, run_preprocess
    from limitr.files import write_json

    cfg = PreprocessConfig(mimic_root=Path("unused"), reports=Path("unused"), image_size=size, ms_cxr=None,
                           class_retrieval=None, split_fractions=(0.4, 0.1, 0.5), **kw)
    write_json(out / "report.json", run_preprocess(plan_preprocess(cfg), out))
    return out


@pytest.fixture(scope="module")
def sources(module_tmp: Path) -> dict:
    import torch

    from limitr.files import write_json
    from limitr.model import LIMITR, ModelConfig
    from limitr.text.tokenize import tokenize_shards
    from limitr.text.tokenizer import load_tokenizer

    root = module_tmp
    make_iu_kaggle(root / "iu", n_good=16)
    make_manifest(root / "archive", n_good=20)
    iu = _preprocess(root / "iu-shards", source="iu", iu_root=root / "iu")
    target = _preprocess(root / "archive-shards", source="manifest", manifest=root / "archive" / "manifest.csv")
    tokens = root / "iu-tokens"  # the model's own tokens: MiniLM at a token limit of its own
    write_json(tokens / "report.json", tokenize_shards(iu, tokens, load_tokenizer(None), max_length=LIMIT))
    torch.manual_seed(0)
    model = root / "model"
    LIMITR(ModelConfig(embed_dim=16, text_freeze_layers=-1, score_chunk=4)).save_pretrained(model / "best")
    write_json(model / "config.json", {"model": json.loads((model / "best" / "config.json").read_text()),
                                       "train": {"crop_size": CROP, "upsample_to": None}})
    params = root / "params.yaml"
    params.write_text(
        "base:\n  device: cpu\nembed:\n  batch_size: 8\nevaluate:\n  block_size: 4\n"
        f"transfer:\n  out: {root / 'transfer'}\n  metrics: {root / 'metrics'}\n  sets:\n"
        f"    iu_on_archive: {{model: {model}, tokens: {tokens}, shards: {iu}, target: {target}}}\n")
    return {"root": root, "iu": iu, "target": target, "tokens": tokens, "model": model, "params": params}


def test_transfer_equals_the_plain_chain(sources: dict) -> None:
    import torch

    from limitr.files import write_json
    from limitr.text.tokenize import tokenize_shards
    from limitr.text.tokenizer import load_tokenizer
    from stages.app import app

    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["transfer", "--params", str(sources["params"]), "--name", "iu_on_archive"])
    assert result.exit_code == 0, result.output
    got = json.loads((sources["root"] / "metrics" / "iu_on_archive.json").read_text())
    assert got["used"]["max_length"] == LIMIT and got["used"]["image_size"] == SIZE
    assert got["used"]["tokenizer"].startswith(str(sources["tokens"] / "tokenizer"))
    from limitr.data.shards import read_split
    n_test = read_split(sources["target"], "test").num_rows
    assert got["test_studies"] == n_test > 0
    assert got["retrieval"]["full"]["n_candidates"] == n_test
    assert got["class_retrieval"]["source"] == "manifest 5x200 (test split)"

    # the plain chain, by hand: the model's tokenizer and limit, then the embed and evaluate stages
    root = sources["root"] / "plain"
    tokens = root / "tokens"
    write_json(tokens / "report.json", tokenize_shards(sources["target"], tokens,
                                                       load_tokenizer(sources["tokens"] / "tokenizer"), LIMIT))
    for args in (["embed", "--model", str(sources["model"]), "--shards", str(sources["target"]), "--tokens",
                  str(tokens), "--out", str(root / "emb"), "--batch-size", "8", "--device", "cpu"],
                 ["evaluate", "--embeddings", str(root / "emb"), "--model", str(sources["model"]), "--shards",
                  str(sources["target"]), "--metrics", str(root / "metrics"), "--plots", str(root / "plots"),
                  "--block-size", "4", "--ground-truth", "null", "--device", "cpu"]):
        result = CliRunner().invoke(app, [*args, "--params", str(sources["params"])])
        assert result.exit_code == 0, result.output
    plain = json.loads((root / "metrics" / "summary.json").read_text())
    for key in ("i2t_R@1", "t2i_R@5", "r_sum", "block_r_sum", "P@5", "P@10", "auroc"):
        assert got[key] == plain[key], key
    assert got["chance_r_sum"] > 0


def test_transfer_refuses_another_image_size_and_unknown_sets(sources: dict, tmp_path: Path) -> None:
    from stages.app import app

    other = _preprocess(tmp_path / "small", size=SIZE - 8, source="manifest",
                        manifest=sources["root"] / "archive" / "manifest.csv")
    params = tmp_path / "params.yaml"
    params.write_text(sources["params"].read_text().replace(str(sources["target"]), str(other)))
    for args, words in ((["--name", "iu_on_archive"], ["trained on 40-pixel", "--image-size 40"]),
                        (["--name", "nope"], ["no transfer set 'nope'"])):
        result = CliRunner().invoke(app, ["transfer", "--params", str(params), *args])
        lines = [line for line in result.output.strip().splitlines() if line]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert all(w in lines[0] for w in words), lines[0]
