"""The training data path at growing split sizes: peak memory per process, loader studies/s.

For each split size (default 2,000 and 20,000 training studies, same image size) and each
worker count (0 and 2), a fresh process builds the training dataset
(:class:`limitr.data.studies.StudyDataset`, random crops) and iterates a DataLoader over it
exactly as the training loop does (ShardedBatchSampler, EpochBatches, collate_studies,
persistent workers), for a fixed number of batches. It reports:

- peak RSS of the training process and, separately, the largest peak RSS of its workers
  (``getrusage``), and the private (anonymous) part of the training process's RSS at the end;
- loader studies/s after the first batch.

From the two sizes: the growth of the training process's peak RSS per training study,
extrapolated to MIMIC-CXR's 227,000 training studies (target < 1 GB; the dataset that held
every PNG in memory grew by ~113 KB per study at 256 px, ~24 GB), and the 2-worker/0-worker
throughput ratio (target >= 1.8; it needs two idle cores for the workers besides the training
process: on a machine whose cores are busy with other work the ratio falls, so run it alone).
The CPU time the training process itself spends per study (what a GPU step waits on when
the loader runs in-process) is printed too: it does not depend on what else runs.

The studies are not synthesised from scratch (20,000 renderings take long): the rows of a
real preprocessed split (by default the pipeline's own data/shards and data/tokens, i.e. the
synthetic set at preprocess.image_size) are replicated with new study ids, in shard files of
500 studies with row groups of 256, as preprocess writes them.

    python benchmarks/bench_data_path.py [--sizes 2000 20000] [--batches 400] [--shards data/shards]
    python benchmarks/bench_data_path.py --quick --shards S --tokens T   # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIMIC_TRAIN_STUDIES = 227_000
TARGETS = {"extrapolated growth at 227k studies (GB)": 1.0, "2-worker / 0-worker throughput": 1.8}


def replicate(src_shards: Path, src_tokens: Path, out: Path, n: int, split: str = "train") -> None:
    """``n`` studies made of the rows of ``src`` (cycled, new study ids) in ``out``."""
    from limitr.data.shards import read_split

    studies = read_split(src_shards, split)
    tokens = pq.read_table(src_tokens / f"{split}.parquet")
    by_id = {sid: i for i, sid in enumerate(tokens.column("study_id").to_pylist())}
    keep = [i for i, sid in enumerate(studies.column("study_id").to_pylist()) if sid in by_id]
    studies = studies.take(pa.array(keep))
    tok_rows = pa.array([by_id[s] for s in studies.column("study_id").to_pylist()])
    tokens = tokens.take(tok_rows)
    m = studies.num_rows
    (out / "shards" / split).mkdir(parents=True, exist_ok=True)
    (out / "tokens").mkdir(parents=True, exist_ok=True)
    ids = np.arange(n, dtype=np.int64) + 90_000_000
    src_rows = np.arange(n) % m
    per_file = 500
    for part, start in enumerate(range(0, n, per_file)):
        rows = src_rows[start : start + per_file]
        table = studies.take(pa.array(rows))
        table = table.set_column(table.schema.get_field_index("study_id"), "study_id",
                                 pa.array(ids[start : start + per_file]))
        pq.write_table(table, out / "shards" / split / f"part-{part:05d}.parquet",
                       row_group_size=256, compression="zstd")
    tok = tokens.take(pa.array(src_rows))
    tok = tok.set_column(tok.schema.get_field_index("study_id"), "study_id", pa.array(ids))
    pq.write_table(tok, out / "tokens" / f"{split}.parquet")


def _status_mb(key: str) -> float:
    """A memory figure of /proc/self/status (kB there) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure(data: Path, workers: int, batches: int, batch_size: int, crop: int) -> dict:
    """One configuration, in this (fresh) process."""
    import torch

    from limitr.data.prepare import collate_studies
    from limitr.data.studies import EpochBatches, StudyDataset
    from limitr.train.distributed import ShardedBatchSampler

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = StudyDataset(data / "shards", data / "tokens", "train", crop, train=True, seed=0,
                      store_dir=data / "store")
    built = time.perf_counter() - t0
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon_built = _status_mb("RssAnon")
    sampler = EpochBatches(ShardedBatchSampler(len(ds), batch_size, seed=0))
    kwargs = dict(num_workers=workers, persistent_workers=True, prefetch_factor=2) if workers else {}
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_studies,
                                         generator=torch.Generator().manual_seed(0), **kwargs)
    sampler.set_epoch(0)
    it = iter(loader)
    next(it)  # workers started, first batch in
    start = time.perf_counter()
    cpu_start = time.process_time()  # this process only (all its threads), not its workers
    n, epoch = 0, 0
    while n < batches * batch_size:  # epoch after epoch (persistent workers) until enough
        for batch in it:
            n += len(batch)
            if n >= batches * batch_size:
                break
        else:
            epoch += 1
            sampler.set_epoch(epoch)
            it = iter(loader)
    rate = n / (time.perf_counter() - start)
    cpu_ms = 1000 * (time.process_time() - cpu_start) / n
    del it, loader  # workers exit; their peak RSS joins RUSAGE_CHILDREN
    time.sleep(0.5)
    return {
        "studies": len(ds),
        "workers": workers,
        "store_build_s": round(built, 2),
        "rss_after_build_mb": round(rss_built, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_anon_after_build_mb": anon_built,
        "rss_anon_mb": _status_mb("RssAnon"),
        "rss_file_mb": _status_mb("RssFile"),
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1) if workers else 0.0,
        "studies_per_s": round(rate, 1),
        "training_process_cpu_ms_per_study": round(cpu_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=400, help="batches timed per configuration")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--shards", type=Path, default=ROOT / "data" / "shards")
    parser.add_argument("--tokens", type=Path, default=ROOT / "data" / "tokens")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few batches, 0 workers (a smoke run)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: measure one set
    parser.add_argument("--one-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.workers, args.batches, args.batch_size, args.crop = [40, 80], [0], 2, 4, 48
    if args.one is not None:
        print(json.dumps(measure(args.one, args.one_workers, args.batches, args.batch_size, args.crop)))
        return
    if not (args.shards / "train").is_dir() or not (args.tokens / "train.parquet").is_file():
        sys.exit(f"error: no train split in {args.shards} / {args.tokens}: run `dvc repro tokenize` first")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-data-path-") as tmp:
        for n in args.sizes:
            data = Path(tmp) / f"n{n}"
            t = time.perf_counter()
            replicate(args.shards, args.tokens, data, n)
            print(f"{n} studies replicated in {time.perf_counter() - t:.1f} s", flush=True)
            for w in args.workers:
                cmd = [sys.executable, __file__, "--one", str(data), "--one-workers", str(w),
                       "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--crop", str(args.crop)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
                row = json.loads(out.strip().splitlines()[-1])
                results.append(row)
                print(json.dumps(row), flush=True)
    small, large = min(args.sizes), max(args.sizes)

    def get(n: int, w: int, key: str) -> float:
        return next(r[key] for r in results if r["studies"] == n and r["workers"] == w)

    print()
    for w in args.workers:
        anon_kb = 1024 * (get(large, w, "rss_anon_mb") - get(small, w, "rss_anon_mb")) / (large - small)
        print(f"{w} workers: private (anonymous) RSS of the training process after the run: "
              f"{anon_kb:.2f} KB per study, {anon_kb * MIMIC_TRAIN_STUDIES / 1024**2:.2f} GB at {MIMIC_TRAIN_STUDIES}")
        growth_kb = 1024 * (get(large, w, "peak_rss_mb") - get(small, w, "peak_rss_mb")) / (large - small)
        print(f"{w} workers: training process peak RSS {get(small, w, 'peak_rss_mb'):.0f} MB at {small}, "
              f"{get(large, w, 'peak_rss_mb'):.0f} MB at {large} studies: {growth_kb:.2f} KB per study, "
              f"{growth_kb * MIMIC_TRAIN_STUDIES / 1024**2:.2f} GB extrapolated to {MIMIC_TRAIN_STUDIES} "
              f"(target < {TARGETS['extrapolated growth at 227k studies (GB)']} GB)")
        if w:
            print(f"   worker peak RSS {get(small, w, 'worker_peak_rss_mb'):.0f} MB at {small}, "
                  f"{get(large, w, 'worker_peak_rss_mb'):.0f} MB at {large} studies")
    if 0 in args.workers and 2 in args.workers:
        for n in args.sizes:
            ratio = get(n, 2, "studies_per_s") / get(n, 0, "studies_per_s")
            print(f"{n} studies: loader {get(n, 0, 'studies_per_s'):.0f} studies/s with 0 workers, "
                  f"{get(n, 2, 'studies_per_s'):.0f} with 2: ratio {ratio:.2f} "
                  f"(target >= {TARGETS['2-worker / 0-worker throughput']}); CPU of the training "
                  f"process per study {get(n, 0, 'training_process_cpu_ms_per_study'):.3f} ms with 0 "
                  f"workers, {get(n, 2, 'training_process_cpu_ms_per_study'):.3f} ms with 2")


if __name__ == "__main__":
    main()
