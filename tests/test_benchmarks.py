"""Every benchmarks/bench_*.py runs end to end in its quick mode on tiny data.

No figure is checked (speed targets live in the benchmarks, not in tests): the point is that
an interface change breaks a test here, not a user's ``make bench``. One tiny data folder
(a saved model, embeddings, study and token shards, the original image files) serves them all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(Path(__file__).resolve().parent / "use"))


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")  # shared by the runs below
    env["TRITON_CACHE_DIR"] = str(tmp / "triton")
    return env


@pytest.fixture(scope="module")
def bench_data(module_tmp: Path) -> Path:
    """A pipeline-like data folder: model, embeddings, shards (test and, copied, train),
    tokens with the tokenizer, and the original files in the MIMIC-CXR layout."""
    import torch
    from use_fixtures import build, embed

    from limitr.data.mimic import study_folder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = module_tmp
    paths = build(root / "data", n_studies=16)
    embed(paths)
    torch.set_num_threads(threads)
    data = root / "data"
    (data / "shards" / "train").mkdir()
    shutil.copy(data / "shards" / "test" / "part-00000.parquet", data / "shards" / "train" / "part-00000.parquet")
    shutil.copy(data / "tokens" / "test.parquet", data / "tokens" / "train.parquet")
    raw = data / "raw" / "synthetic" / "mimic-cxr-jpg"
    for i, (front, lat) in enumerate(paths["files"]):
        folder = study_folder(raw, 10000000 + i, 50000000 + i)
        folder.mkdir(parents=True)
        shutil.copy(front, folder / f"f{i}{front.suffix}")
        if lat is not None:
            shutil.copy(lat, folder / f"l{i}{lat.suffix}")
    return data


def _run(args: list[str], tmp: Path) -> str:
    run = subprocess.run([sys.executable, *args], cwd=tmp, env=_env(tmp), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run.stdout


def test_every_benchmark_has_a_quick_run_here() -> None:
    names = {p.name for p in BENCH.glob("bench_*.py")}
    assert names == {"bench_data_path.py", "bench_local_alignment.py", "bench_preprocess_images.py",
                     "bench_search.py", "bench_synthesize.py", "bench_train_step.py"}, names
    for name in names:
        assert "--quick" in (BENCH / name).read_text(), name


@pytest.mark.slow
def test_quick_benchmarks_run(bench_data: Path, tmp_path: Path) -> None:
    data = bench_data
    out = _run([str(BENCH / "bench_search.py"), "--quick", "--data", str(data), "--threads", "1"], tmp_path)
    assert "query over 50 studies" in out and "encoding 8 studies" in out, out

    out = _run([str(BENCH / "bench_synthesize.py"), "--quick", "--workers", "1"], tmp_path)
    assert "same files for every worker count: yes" in out, out

    out = _run([str(BENCH / "bench_preprocess_images.py"), "--quick"], tmp_path)
    assert "agreement with (a)" in out, out

    out = _run([str(BENCH / "bench_data_path.py"), "--quick", "--shards", str(data / "shards"),
                "--tokens", str(data / "tokens")], tmp_path)
    assert "KB per study" in out, out

    params = tmp_path / "tiny.yaml"
    params.write_text(json.dumps({
        "model": {"embed_dim": 16, "text_freeze_layers": -1, "score_chunk": 4},
        "train": {"shards": str(data / "shards"), "tokens": str(data / "tokens"), "batch_size": 4,
                  "crop_size": 48},
    }))
    out = _run([str(BENCH / "bench_train_step.py"), "--quick", "--params", str(params)], tmp_path)
    assert "s/step" in out, out

    out = _run([str(BENCH / "bench_local_alignment.py"), "--quick", "--repeats", "1", "--compiled"], tmp_path)
    assert "quick" in out and "compiled SAF" in out and "FELL BACK" not in out, out
