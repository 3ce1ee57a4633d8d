"""`limitr train` as users run it: params file, options, outputs, one-line errors, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.live import STEP_CURVES, read_curve
from train_data_factory import tiny_model_dict

REPO = Path(__file__).resolve().parents[2]


def _params(tmp: Path, bert: Path, data) -> Path:
    shards, tokens = data
    params = {
        "base": {"seed": 3, "device": "cpu"},
        "model": tiny_model_dict(bert),
        "train": {
            "shards": str(shards),
            "tokens": str(tokens),
            "out": str(tmp / "model"),
            "epochs": 5,
            "batch_size": 16,
            "crop_size": 40,
            "max_steps_per_epoch": 1,
        },
    }
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _env() -> dict:
    env = dict(os.environ, LIMITR_NO_PROGRESS="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _limitr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )


def test_train_stage_writes_model_curves_and_metrics(tiny_bert, tiny_data, tmp_path: Path) -> None:
    params = _params(tmp_path, tiny_bert, tiny_data)
    result = _limitr("train", "--params", str(params), "--epochs", "2", "--batch-size", "8",
                     "--metrics", str(tmp_path / "metrics"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best r_sum" in result.stdout
    out = tmp_path / "model"
    assert (out / "best" / "model.safetensors").is_file() and (out / "last" / "state.pt").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["batch_size"] == 8  # options override
    assert config["seed"] == 3
    curves = tmp_path / "metrics" / "training"
    for name in STEP_CURVES:
        if name != "grad_norm" or config["train"]["grad_clip"]:
            assert [x for x, _ in read_curve(curves, "per_step", name)] == [1, 2], name
    assert [x for x, _ in read_curve(curves, "per_epoch", "r_sum")] == [1, 2]
    assert json.loads((curves / "metrics.json").read_text())["per_epoch"]["r_sum"] is not None
    summary = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert summary["epochs_run"] == 2 and summary["world_size"] == 1
    assert {"final", "best", "best_epoch", "seconds"} <= set(summary)
    # model.score_local_weight: validate -> the best checkpoint carries the factor its epoch chose
    from limitr.train.validate import LOCAL_WEIGHT_GRID

    chosen = json.loads((out / "best" / "config.json").read_text())["score_local_weight"]
    assert chosen in LOCAL_WEIGHT_GRID and summary["best"]["score_local_weight"] == chosen
    assert summary["best"]["r_sum"] >= summary["best"]["r_sum_global"]


def test_train_stage_errors_are_one_line(tiny_bert, tiny_data, tmp_path: Path) -> None:
    params = _params(tmp_path, tiny_bert, tiny_data)
    result = _limitr("train", "--params", str(params), "--shards", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "preprocess" in lines[0]
    result = _limitr("train", "--params", str(params), "--resume", "--out", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode == 1 and "nothing to resume" in result.stderr


def test_truncated_checkpoint_with_resume_is_one_line(tiny_bert, tiny_data, tmp_path: Path) -> None:
    params = _params(tmp_path, tiny_bert, tiny_data)
    result = _limitr("train", "--params", str(params), "--epochs", "1", "--batch-size", "8",
                     "--metrics", str(tmp_path / "metrics"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = tmp_path / "model" / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "model").rglob("*")}
    result = _limitr("train", "--params", str(params), "--epochs", "2", "--batch-size", "8", "--resume",
                     "--metrics", str(tmp_path / "metrics"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr
    assert str(weights) in lines[0] and "--no-resume" in lines[0]
    # nothing written: the run folder is as it was
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "model").rglob("*")} == before


@pytest.mark.slow
def test_train_stage_under_torchrun(tiny_bert, tiny_data, tmp_path: Path) -> None:
    params = _params(tmp_path, tiny_bert, tiny_data)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "stages", "train", "--params", str(params), "--epochs", "1",
        "--metrics", str(tmp_path / "metrics"),
    ]
    # TMPDIR: torchrun's own log folder goes with the test's
    result = subprocess.run(cmd, cwd=tmp_path, env={**_env(), "TMPDIR": str(tmp_path)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("best r_sum") == 1  # rank 0 alone prints
    summary = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 1
