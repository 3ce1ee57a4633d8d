"""The synthetic source runs only when the pipeline reads it (issue 15, item 4): with the
default params `dvc repro` generates the synthetic set before preprocess; with
preprocess.mimic_root at a real MIMIC-CXR-JPG root, the synthetic stage is not upstream of
anything and preprocess runs on the real root alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "data"))

from mimic_fixture import Img, Study, write_root  # noqa: E402

SYNTH = "stages/synthetic/dvc.yaml:synthesize"


def _copy_repo(work: Path) -> dict:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split("\n")
    for rel in files:
        if rel and (REPO / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, work / rel)
    env = dict(os.environ, LIMITR_NO_PROGRESS="1", GIT_AUTHOR_NAME="t", GIT_COMMITTER_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_EMAIL="t@example.invalid")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(work) + os.pathsep + env.get("PYTHONPATH", "")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)
    return env


def _dvc(work: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _upstream(work: Path, env: dict, target: str) -> str:
    return _dvc(work, env, "dag", "--dot", target).stdout


def test_default_pipeline_runs_the_synthetic_source_first(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    env = _copy_repo(work)
    for stage in ("preprocess", "tokenize", "train", "embed", "evaluate"):
        assert SYNTH in _upstream(work, env, stage), stage
    # `dvc repro` (the root dvc.yaml) reaches it: its output is preprocess's input
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["preprocess"]["mimic_root"].startswith(params["synthesize"]["out"] + "/")


@pytest.mark.slow
def test_real_root_never_touches_the_synthetic_source(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    env = _copy_repo(work)
    real = tmp_path / "physionet"
    root, reports = write_root(real, [Study(10000000 + i, 50000000 + i, [Img("PA"), Img("LATERAL")],
                                            split=("train", "train", "validate", "test")[i % 4])
                                      for i in range(8)])
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["preprocess"].update({"mimic_root": str(root), "reports": str(reports), "ms_cxr": None,
                                 "class_retrieval": None, "image_size": 32, "workers": 1})
    params["evaluate"]["ground_truth"] = None
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    for stage in ("preprocess", "tokenize", "train", "embed", "evaluate"):
        assert "synthesize" not in _upstream(work, env, stage), stage
    out = _dvc(work, env, "repro", "preprocess")
    assert "synthesize" not in out.stdout and "Running stage 'preprocess'" in out.stdout
    assert not (work / "data" / "raw" / "synthetic").exists()
    sheet = Path("metrics/plots/synthetic_sheet.png")  # committed; not redrawn
    assert (work / sheet).read_bytes() == (REPO / sheet).read_bytes()
    assert (work / "data" / "shards" / "report.json").is_file()
    status = _dvc(work, env, "status", "dvc.yaml").stdout
    assert "preprocess" not in status
