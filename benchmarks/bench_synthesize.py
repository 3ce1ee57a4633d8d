"""Time to write the synthetic data set, one worker against several.

The baseline is the same generation with one worker (rendering inline, no pool),
measured in the same run; the speed-up of the pool is reported as a ratio to it.
Planning (reports, labels, ids) and the tables are timed on their own, as the part that
does not run in parallel. Every run writes the same files (checked by hashing the
ground truth and tables).

    python benchmarks/bench_synthesize.py                    # 2,000 studies, 1 and 2 workers
    python benchmarks/bench_synthesize.py --n-studies 200 --workers 1 2 4
    python benchmarks/bench_synthesize.py --image-scale 1.0 --n-studies 20
    python benchmarks/bench_synthesize.py --quick            # a few small studies, a smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from limitr.synthetic import generate, plan_dataset


def _fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for name in ("ground_truth.jsonl", "mimic-cxr-reports.zip", "chexpert_5x200.csv",
                 "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-studies", type=int, default=2000)
    parser.add_argument("--image-scale", type=float, default=0.125)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="a few studies (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.n_studies, args.image_scale = 6, 0.05

    start = time.perf_counter()
    plan = plan_dataset(args.n_studies, args.seed, args.image_scale)
    plan_s = time.perf_counter() - start
    images = sum(len(s.images) for s in plan)
    print(f"{args.n_studies} studies, {images} images at image_scale {args.image_scale}; "
          f"planning (reports, labels, ids) {plan_s:.2f} s")

    results = []
    scratch = Path(tempfile.mkdtemp(prefix="bench_synthesize_"))
    try:
        for workers in args.workers:
            out = scratch / f"w{workers}"
            start = time.perf_counter()
            generate(out, args.n_studies, args.seed, image_scale=args.image_scale, workers=workers)
            seconds = time.perf_counter() - start
            size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
            results.append({"workers": workers, "seconds": round(seconds, 2),
                            "studies_per_s": round(args.n_studies / seconds, 1),
                            "images_per_s": round(images / seconds, 1), "megabytes": round(size_mb, 1),
                            "fingerprint": _fingerprint(out)})
            shutil.rmtree(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = results[0]["seconds"]
    print(f"{'workers':>7} {'seconds':>8} {'studies/s':>10} {'images/s':>10} {'MB':>7} {'speed-up':>9}  files")
    for r in results:
        print(f"{r['workers']:>7} {r['seconds']:>8.1f} {r['studies_per_s']:>10.1f} {r['images_per_s']:>10.1f} "
              f"{r['megabytes']:>7.1f} {base / r['seconds']:>8.2f}x  {r['fingerprint']}")
    same = len({r["fingerprint"] for r in results}) == 1
    print("same files for every worker count:", "yes" if same else "NO")
    if args.json:
        args.json.write_text(json.dumps({"n_studies": args.n_studies, "images": images,
                                         "image_scale": args.image_scale, "planning_s": round(plan_s, 2),
                                         "runs": results, "same_files": same}, indent=2) + "\n")


if __name__ == "__main__":
    main()
