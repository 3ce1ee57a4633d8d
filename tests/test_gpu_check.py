"""benchmarks/gpu_check.sh and gpu_check.py, run on the CPU with tiny settings.

The GPU figures themselves need a GPU; here the same script runs end to end (the pipeline's
stages prepare a set, real training steps in bf16, the bf16/fp32 comparison, a one-process
DDP step on gloo) so that a GPU user's run does not stop on a slip in the script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CHECK = ROOT / "benchmarks" / "gpu_check.py"
TINY = [
    "--studies", "60", "--steps", "2", "--warmup", "1",
    "--set", "train.batch_size=4",
    "--set", "preprocess.image_size=64",
    "--set", "train.crop_size=48",
    "--set", "train.upsample_to=null",
    "--set", "model.image_backbone=resnet18",
    "--set", "model.embed_dim=32",
    "--set", "train.num_workers=1",
    "--set", "synthesize.workers=1",
    "--set", "preprocess.workers=1",
]


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path: Path) -> None:
    work = tmp_path / "work"
    run = subprocess.run(
        ["bash", str(SCRIPT), *TINY],
        cwd=tmp_path, env=_env(PY=sys.executable, DEVICE="cpu", WORK=str(work)),
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for line in ("studies/s", "peak memory", "data wait", "bfloat16 vs fp32", "DDP step (gloo, 1 process)  ok"):
        assert line in out, out
    assert "NCCL needs CUDA; the one-process DDP step runs on gloo instead" in out
    f = json.loads((work / "gpu_check.json").read_text())
    assert f["autocast_dtype"] == "bfloat16" and f["batch_size"] == 4 and f["steps"] == 2
    assert f["studies_per_s"] > 0 and f["studies_per_s_median_step"] > 0 and 0 <= f["data_wait_share"] <= 1 and f["losses_finite"]
    assert f["peak_rss_gib"] > 0
    c = f["compiled"]  # the same steps with train.compile: true, kernels under the work folder
    assert c["fallback"] is None and c["graphs"] > 0 and c["studies_per_s_median_step"] > 0, c
    assert "compiled local alignment" in out and any((work / "compile-cache" / "inductor").iterdir())
    a = f["bf16_vs_fp32"]
    # bf16 actually ran (scores differ) and stays close: the whole encoders in bf16 give a
    # few 2^-8 at most (tests/model/test_model_mixed_precision.py); 2^-5 here.
    assert 0 < a["max_abs_total"] < 2.0**-5
    assert 0 <= a["top1_i2t_agree"] <= 1
    d = f["ddp"]
    assert d["backend"] == "gloo" and d["ok"]
    # One process through the all-gather and DDP gives the plain loss (same dropout draws).
    assert d["loss"] == pytest.approx(d["plain_loss"], rel=1e-4)

    # A second run reuses the prepared set.
    again = subprocess.run(
        [sys.executable, str(CHECK), "--device", "cpu", "--work", str(work), *TINY, "--steps", "1", "--warmup", "0"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("unchanged, reused") == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_asked_without_cuda_is_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(CHECK), "--device", "cuda", "--work", str(tmp_path / "w")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]
    assert not (tmp_path / "w").exists()  # nothing prepared


def test_bad_set_is_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(CHECK), "--device", "cpu", "--work", str(tmp_path / "w"), "--set", "batch_size=4"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "section.key=value" in lines[0]
