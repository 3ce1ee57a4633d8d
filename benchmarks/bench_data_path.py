"""The training data path at growing split sizes: peak memory per process, loader studies/s.

For each split size (default 5,000 and 25,000 distinct training studies at 256 px, the paper's
image size) and each worker count (0 and 2), a fresh process sets up its allocator as the
train stage does (:func:`limitr.train.allocator.tune_allocator`: freed memory stays in the
process), builds the training dataset (:class:`limitr.data.studies.StudyDataset`, random
crops) and iterates a DataLoader over it exactly as the training loop does
(ShardedBatchSampler, EpochBatches, collate_studies, persistent workers), for a fixed number
of batches. It reports, each on its own:

- the peak RSS of the training process (``getrusage``) and the largest peak RSS of its workers;
- the training process's anonymous (private) resident memory, ``RssAnon``, after the dataset
  is built and at the end (file-backed pages, which the kernel can drop, are left out);
- loader studies/s after the first batch.

From the two sizes: the growth of the training process's peak RSS and of its RssAnon per
training study, extrapolated to MIMIC-CXR's 227,000 training studies (target: at most 1 KB
per study, under 1 GB), and the 2-worker/0-worker throughput ratio (target >= 1.8; it needs
two idle cores for the workers besides the training process: on a machine whose cores are
busy with other work the ratio falls, so run it alone). The CPU time the training process
itself spends per study (what a GPU step waits on when the loader runs in-process) is printed
too: it does not depend on what else runs. Both sizes lie above the token reader's batch
(8,192 rows), so the figures are the growth at scale, not the warm-up of fixed buffers.

The studies are distinct, as a real split's are: each image of a real preprocessed split (by
default the pipeline's own data/shards and data/tokens) is resized to ``--image-size`` and
given a little noise seeded by its new study id before it is encoded as preprocess encodes
it, so no two studies share bytes; they are written in shard files of 500 studies with row
groups of 256 and a token shard with row groups of 500, as preprocess and tokenize write them.

    python benchmarks/bench_data_path.py [--sizes 5000 25000] [--image-size 256] [--batches 400]
    python benchmarks/bench_data_path.py --quick --shards S --tokens T   # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
TARGETS = {"growth per added training study (KB)": 1.0, "2-worker / 0-worker throughput": 1.8}


def _distinct_png(png: bytes, study: int, size: int) -> bytes:
    """``png`` resized to ``size`` with +-2 grey levels of noise seeded by ``study``."""
    import io

    from PIL import Image

    from limitr.data.images import encode_png

    with Image.open(io.BytesIO(png)) as img:
        grey = img.convert("L").resize((size, size), Image.BILINEAR)
    pixels = np.asarray(grey, dtype=np.int16) + np.random.default_rng(study).integers(-2, 3, (size, size))
    return encode_png(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))


def _write_part(args: tuple) -> None:
    """One shard file of distinct studies (run in a worker process)."""
    path, ids, fronts, lats, size = args
    table = pa.table({
        "study_id": pa.array(ids, pa.int64()),
        "frontal_image": pa.array([_distinct_png(f, 2 * int(i), size) for i, f in zip(ids, fronts)], pa.binary()),
        "lateral_image": pa.array([None if lat is None else _distinct_png(lat, 2 * int(i) + 1, size)
                                   for i, lat in zip(ids, lats)], pa.binary()),
    })
    pq.write_table(table, path, row_group_size=256, compression="zstd")


def replicate(src_shards: Path, src_tokens: Path, out: Path, n: int, image_size: int, split: str = "train") -> None:
    """``n`` distinct studies made from the rows of ``src`` (cycled, new study ids, images
    resized to ``image_size`` and made distinct) in ``out``."""
    from concurrent.futures import ProcessPoolExecutor

    from limitr.data.shards import read_split

    studies = read_split(src_shards, split)
    tokens = pq.read_table(src_tokens / f"{split}.parquet")
    by_id = {sid: i for i, sid in enumerate(tokens.column("study_id").to_pylist())}
    keep = [i for i, sid in enumerate(studies.column("study_id").to_pylist()) if sid in by_id]
    studies = studies.take(pa.array(keep))
    tok_rows = [by_id[s] for s in studies.column("study_id").to_pylist()]
    fronts = studies.column("frontal_image").to_pylist()
    lats = studies.column("lateral_image").to_pylist()
    m = studies.num_rows
    (out / "shards" / split).mkdir(parents=True, exist_ok=True)
    (out / "tokens").mkdir(parents=True, exist_ok=True)
    ids = np.arange(n, dtype=np.int64) + 90_000_000
    src_rows = np.arange(n) % m
    per_file = 500
    jobs = [(out / "shards" / split / f"part-{part:05d}.parquet", ids[start : start + per_file],
             [fronts[r] for r in src_rows[start : start + per_file]],
             [lats[r] for r in src_rows[start : start + per_file]], image_size)
            for part, start in enumerate(range(0, n, per_file))]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_write_part, jobs))
    tok = tokens.take(pa.array([tok_rows[r] for r in src_rows]))
    tok = tok.set_column(tok.schema.get_field_index("study_id"), "study_id", pa.array(ids))
    pq.write_table(tok, out / "tokens" / f"{split}.parquet", row_group_size=500)


def _status_mb(key: str) -> float:
    """A memory figure of /proc/self/status (kB there) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure(data: Path, workers: int, batches: int, batch_size: int, crop: int) -> dict:
    """One configuration, in this (fresh) process."""
    from limitr.train.allocator import tune_allocator

    tune_allocator()  # as the train stage does, before the first tensor
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
        "dataset_bytes_per_study": round(ds.resident_bytes() / max(1, len(ds)), 1),
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 25000])
    parser.add_argument("--image-size", type=int, default=256, help="the studies' image size (paper: 256)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=400, help="batches timed per configuration")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--shards", type=Path, default=ROOT / "data" / "shards")
    parser.add_argument("--tokens", type=Path, default=ROOT / "data" / "tokens")
    parser.add_argument("--workdir", type=Path, help="keep the generated studies here and reuse them on the next run "
                        "(default: a temporary folder, removed)")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few batches, 0 workers (a smoke run)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: measure one set
    parser.add_argument("--one-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.workers, args.batches, args.batch_size, args.crop = [40, 80], [0], 2, 4, 48
        args.image_size = 64
    if args.one is not None:
        print(json.dumps(measure(args.one, args.one_workers, args.batches, args.batch_size, args.crop)))
        return
    if not (args.shards / "train").is_dir() or not (args.tokens / "train.parquet").is_file():
        sys.exit(f"error: no train split in {args.shards} / {args.tokens}: run `dvc repro tokenize` first")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-data-path-") as tmp:
        for n in args.sizes:
            data = (args.workdir or Path(tmp)) / f"n{n}-{args.image_size}px"
            if (data / "tokens" / "train.parquet").is_file():
                print(f"{n} distinct studies at {args.image_size} px reused from {data}", flush=True)
            else:
                t = time.perf_counter()
                replicate(args.shards, args.tokens, data, n, args.image_size)
                print(f"{n} distinct studies at {args.image_size} px written in {time.perf_counter() - t:.1f} s",
                      flush=True)
            for w in args.workers:
                shutil.rmtree(data / "store", ignore_errors=True)  # each measurement builds its store
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
        print(f"{w} workers: training process, growth from {small} to {large} studies "
              f"(target <= {TARGETS['growth per added training study (KB)']} KB per study):")
        for key, what in (("peak_rss_mb", "peak RSS"), ("rss_anon_after_build_mb", "RssAnon after the build"),
                          ("rss_anon_mb", "RssAnon at the end")):
            kb = 1024 * (get(large, w, key) - get(small, w, key)) / (large - small)
            print(f"   {what:24s} {get(small, w, key):7.0f} MB -> {get(large, w, key):7.0f} MB: {kb:6.2f} KB per study, "
                  f"{kb * MIMIC_TRAIN_STUDIES / 1024**2:5.2f} GB extrapolated to {MIMIC_TRAIN_STUDIES}")
        print(f"   the dataset's own arrays (index, image positions, token matrices): "
              f"{get(large, w, 'dataset_bytes_per_study'):.0f} bytes per study")
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
