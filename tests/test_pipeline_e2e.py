"""The user's main job, end to end: `dvc repro` in a fresh copy of the repository with tiny
params, then every metrics file and plot the pipeline declares is checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "synthesize": {"n_studies": 60, "image_scale": 0.06},
    "preprocess": {"image_size": 64, "workers": 1},
    "tokenize": {"max_length": 48},
    "model": {"embed_dim": 32, "text_freeze_layers": -1, "score_chunk": 8},
    "train": {"epochs": 1, "batch_size": 8, "crop_size": 56, "max_steps_per_epoch": 3},
    "embed": {"batch_size": 16},
}


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split("\n")
    # data/ holds DVC's outputs only
    return [f for f in out if f and (REPO / f).is_file() and not f.startswith("data/")]


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def tiny_repo(work: Path, **train: object) -> Path:
    """A copy of the repository's files in ``work`` with params.yaml shrunk to TINY (and
    ``train`` settings on top); data/ empty, no git yet."""
    for rel in _tracked_files():
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    (work / "data").mkdir(exist_ok=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for sec, values in TINY.items():
        params[sec].update(values)
    params["train"].update(train)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


@pytest.mark.slow
def test_dvc_repro_on_tiny_synthetic(tmp_path: Path) -> None:
    work = tiny_repo(tmp_path / "repo")

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["LIMITR_NO_PROGRESS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "copy"], work, env)
    _run(dvc + ["repro"], work, env)

    dvc_yaml = yaml.safe_load((work / "dvc.yaml").read_text())
    declared_metrics: list[str] = []
    for stage in dvc_yaml["stages"].values():
        for entry in stage.get("metrics", []):
            declared_metrics.extend(entry if isinstance(entry, dict) else [entry])
    declared_plots = [next(iter(p)) if isinstance(p, dict) else p for p in dvc_yaml["plots"]]
    assert declared_metrics and declared_plots

    for rel in declared_metrics:
        data = json.loads((work / rel).read_text())
        assert isinstance(data, dict) and data, rel

    for rel in declared_plots:
        path = work / rel
        assert path.exists(), rel
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        assert files, f"plot folder {rel} is empty"
        for f in files:
            assert f.stat().st_size > 0, f

    retrieval = json.loads((work / "metrics/retrieval.json").read_text())
    for direction in ("i2t", "t2i"):
        for key in ("R@1", "R@5", "R@10", "medR", "meanR", "MRR"):
            assert key in retrieval["full"][direction]
    assert retrieval["full"]["n_candidates"] > 0
    grounding = json.loads((work / "metrics/grounding.json").read_text())
    assert {"cnr", "miou", "pointing_game"} <= set(grounding)
    class_retrieval = json.loads((work / "metrics/class_retrieval.json").read_text())
    assert {"t2i", "i2t"} <= set(class_retrieval)

    # The synthetic source ran (its own dvc.yaml) and drew its sheet.
    assert (work / "data/raw/synthetic/ground_truth.jsonl").is_file()
    assert (work / "metrics/plots/synthetic_sheet.png").stat().st_size > 0
    # The headline figures are the only metrics; the training curves come from DVCLive.
    assert declared_metrics == ["metrics/summary.json"]
    summary = json.loads((work / "metrics/summary.json").read_text())
    assert summary["best_epoch"] == 1 and summary["r_sum"] == round(retrieval["full"]["r_sum"], 2)
    assert (work / "metrics/training/plots/metrics/per_step/loss.tsv").is_file()
    assert (work / "metrics/training/plots/metrics/per_epoch/r_sum.tsv").is_file()

    # A second repro has nothing to do; metrics diff compares against the workspace.
    status = _run(dvc + ["status"], work, env).stdout
    assert "changed" not in status, status
    shown = _run(dvc + ["metrics", "show"], work, env).stdout
    assert max(len(line) for line in shown.splitlines()) <= 200, shown  # one table a terminal shows
