"""Every user mistake listed in issue 16 ends in exit code 1 and one line on stderr that names
the file or setting, and leaves no output behind. The commands run as users run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def limitr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LIMITR_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_misspelt_key_and_section(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("synthesize:\n  n_studys: 2000\n  out: out\n")
    one_line_error(limitr("synthesize", cwd=tmp_path), "params.yaml", "unknown key synthesize.n_studys",
                   "did you mean n_studies?")
    (tmp_path / "params.yaml").write_text("synthesise:\n  n_studies: 20\n")
    one_line_error(limitr("synthesize", "--out", "out", cwd=tmp_path), "unknown section synthesise",
                   "did you mean synthesize?")
    assert not (tmp_path / "out").exists()


def test_wrong_type_in_params_and_in_an_option(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("synthesize:\n  n_studies: lots\n  out: out\n")
    one_line_error(limitr("synthesize", "--params", "p.yaml", cwd=tmp_path), "p.yaml", "synthesize.n_studies",
                   "'lots'")
    (tmp_path / "p.yaml").write_text("tokenize:\n  max_length: long\n")
    one_line_error(limitr("tokenize", "--params", "p.yaml", cwd=tmp_path), "tokenize.max_length")
    (tmp_path / "p.yaml").write_text("evaluate:\n  block_size: many\n")
    one_line_error(limitr("evaluate", "--params", "p.yaml", cwd=tmp_path), "evaluate.block_size")
    (tmp_path / "p.yaml").write_text("preprocess:\n  image_size: [1, 2]\n")
    one_line_error(limitr("preprocess", "--params", "p.yaml", cwd=tmp_path), "preprocess.image_size")
    (tmp_path / "p.yaml").write_text("embed:\n  rows_per_file: 0\n")
    one_line_error(limitr("embed", "--params", "p.yaml", cwd=tmp_path), "embed.rows_per_file")
    (tmp_path / "p.yaml").write_text("synthesize:\n  out: out\n")
    one_line_error(limitr("synthesize", "--params", "p.yaml", "--image-scale", "-1", cwd=tmp_path),
                   "synthesize.image_scale")
    assert not (tmp_path / "out").exists()


def test_params_given_a_folder_or_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    one_line_error(limitr("tokenize", "--params", "conf", cwd=tmp_path), "--params conf is a folder")
    one_line_error(limitr("tokenize", "--params", "nope.yaml", cwd=tmp_path), "nope.yaml does not exist")
    (tmp_path / "bad.yaml").write_text("base: [unclosed\n")
    one_line_error(limitr("tokenize", "--params", "bad.yaml", cwd=tmp_path), "bad.yaml is not valid YAML")


@pytest.mark.parametrize("stage", ["train", "embed", "evaluate"])
def test_device_strings_checked_before_any_work(stage: str, tmp_path: Path) -> None:
    line = one_line_error(limitr(stage, "--device", "gpu0", cwd=tmp_path), "gpu0", "auto, cpu, cuda, cuda:N")
    assert "mps" in line
    (tmp_path / "params.yaml").write_text("base:\n  device: cuda:x\n")
    one_line_error(limitr(stage, cwd=tmp_path), "base.device", "cuda:N")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("stage", ["train", "embed", "evaluate"])
def test_cuda_without_a_gpu_is_one_line(stage: str, tmp_path: Path) -> None:
    # the folders do not exist either: the device is checked first
    one_line_error(limitr(stage, "--device", "cuda", cwd=tmp_path), "device cuda", "no CUDA GPU",
                   "--device cpu")
    one_line_error(limitr(stage, "--device", "cuda:1", cwd=tmp_path), "cuda:1", "no CUDA GPU")


def test_truncated_parquet_shard_in_tokenize(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    table = pa.table({"study_id": [1, 2], "text": ["a b", "c d"]})
    pq.write_table(table, shards / "train" / "part-00000.parquet")
    data = (shards / "train" / "part-00000.parquet").read_bytes()
    (shards / "train" / "part-00000.parquet").write_bytes(data[: len(data) // 2])
    line = one_line_error(limitr("tokenize", "--shards", str(shards), "--out", "tokens", cwd=tmp_path),
                          "part-00000.parquet", "damaged or truncated", "rerun")
    assert str(shards) in line
    assert not (tmp_path / "tokens").exists() and not [p for p in tmp_path.glob(".tokens*") if p.suffix != ".lock"]


def test_wordpiece_vocabulary_with_a_pretrained_encoder(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("tokenize:\n  train_wordpiece: true\n")
    one_line_error(limitr("train", cwd=tmp_path), "tokenize.train_wordpiece", "pretrained text encoder")
    # token shards written with a trained vocabulary (params no longer say so): refused at train time
    (tmp_path / "params.yaml").write_text("base:\n  device: cpu\n")
    (tmp_path / "data" / "tokens").mkdir(parents=True)
    (tmp_path / "data" / "tokens" / "report.json").write_text('{"tokenizer": "x", "trained_wordpiece": true}')
    one_line_error(limitr("train", cwd=tmp_path), "data/tokens", "WordPiece", "train_wordpiece: false")
    assert not (tmp_path / "data" / "model").exists()


def test_help_shows_the_values_of_the_params_file_in_use(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("synthesize:\n  n_studies: 1234\n")
    (tmp_path / "other.yaml").write_text("synthesize:\n  n_studies: 4321\ntrain:\n  epochs: 17\n")
    env_cols = {"COLUMNS": "200"}
    os.environ.update(env_cols)
    try:
        assert "[default: 1234]" in limitr("synthesize", "--help", cwd=tmp_path).stdout
        assert "[default: 4321]" in limitr("synthesize", "--params", "other.yaml", "--help", cwd=tmp_path).stdout
        assert "[default: 4321]" in limitr("synthesize", "--help", "--params=other.yaml", cwd=tmp_path).stdout
        train_help = limitr("train", "--params", "other.yaml", "--help", cwd=tmp_path).stdout
        assert "[default: 17]" in train_help and "[default: data/shards]" in train_help
        # no params file: the schema's defaults
        (tmp_path / "params.yaml").unlink()
        assert "[default: 2000]" in limitr("synthesize", "--help", cwd=tmp_path).stdout
    finally:
        for key in env_cols:
            os.environ.pop(key, None)


@pytest.mark.parametrize("args, words", [
    (["synthesize", "--n-studies", "abc"], ["--n-studies", "valid integer"]),
    (["synthesize", "--fault-rate", "2"], ["--fault-rate"]),
    (["synthesize", "--n-studys", "3"], ["No such option: --n-studys", "--n-studies"]),
    (["synthesise"], ["No such command 'synthesise'"]),
    (["sheet"], ["Missing option '--out'"]),  # its --out is a PNG, not synthesize.out
])
def test_command_line_mistakes_are_one_line_too(args: list, words: list, tmp_path: Path) -> None:
    line = one_line_error(limitr(*args, cwd=tmp_path), *words)
    assert "--help" in line


def test_truncated_model_weights_are_named(tmp_path: Path) -> None:
    """embed and evaluate load the trained model with from_pretrained: a damaged weights file
    is a LimitrError (one line through stage_errors) that names it."""
    from limitr.errors import LimitrError
    from limitr.model import LIMITR, ModelConfig

    folder = tmp_path / "best"
    LIMITR(ModelConfig(embed_dim=16, text_freeze_layers=-1)).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(LimitrError) as info:
        LIMITR.from_pretrained(folder)
    assert str(weights) in str(info.value) and "truncated" in str(info.value) and "\n" not in str(info.value)
