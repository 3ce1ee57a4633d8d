"""``limitr synthesize``: write the synthetic MIMIC-CXR-shaped data set (the default input)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import PARAMS_OPTION, atomic_dir, base, override, print_table, progress_bar, section, stage_errors


@app.command()
def synthesize(
    params: Path = PARAMS_OPTION,
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder to write (replaced atomically): mimic-cxr-jpg/, mimic-cxr-reports.zip, "
        "ms-cxr/, chexpert_5x200.csv, ground_truth.jsonl and, with faults, faults.json. "
        "Default: synthesize.out."),
    n_studies: Optional[int] = typer.Option(
        None, "--n-studies", min=1, help="Number of studies (about 1.7 images each). Default: synthesize.n_studies."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Random seed; the same seed gives byte-identical files. Default: base.seed."),
    fault_rate: Optional[float] = typer.Option(
        None, "--fault-rate", min=0.0, max=1.0, help="Share of studies given one injected fault (truncated, "
        "empty or missing image; missing, empty, header-less or non-UTF-8 report; odd or empty "
        "ViewPosition; empty CSV cell), each listed in faults.json. Default: synthesize.fault_rate."),
    image_scale: Optional[float] = typer.Option(
        None, "--image-scale", help="Image size relative to real MIMIC-CXR (about 2544 x 3056 pixels at 1.0; "
        "0.125 gives about 320 x 380). Default: synthesize.image_scale."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Rendering processes; the output does not depend on it. "
        "Default: synthesize.workers, or the number of usable cores when that is null."),
) -> None:
    """Generate chest radiographs, reports and labels in the MIMIC-CXR-JPG, MS-CXR and
    CheXpert 5x200 formats, with known ground truth, and print a summary."""
    with stage_errors():
        cfg = section(params, "synthesize")
        out_dir = Path(override(out, cfg, "out", "data/raw/synthetic"))
        n = int(override(n_studies, cfg, "n_studies", 2000))
        seed_value = int(override(seed, base(params), "seed", 0))
        rate = float(override(fault_rate, cfg, "fault_rate", 0.0))
        scale = float(override(image_scale, cfg, "image_scale", 0.125))
        n_workers = override(workers, cfg, "workers")
        n_workers = None if n_workers is None else int(n_workers)

        from limitr.synthetic import generate

        start = time.perf_counter()
        with progress_bar(n, "synthesize", unit="study") as bar, atomic_dir(out_dir) as tmp:
            summary = generate(tmp, n, seed_value, fault_rate=rate, image_scale=scale,
                               progress=bar.update, workers=n_workers)
        elapsed = time.perf_counter() - start

        splits = summary["splits"]
        rows = [
            ("output", out_dir),
            ("studies", summary["studies"]),
            ("images", f"{summary['images']}  ({', '.join(f'{k} {v}' for k, v in summary['views'].items())})"),
            ("patients", summary["patients"]),
        ]
        rows += [(f"  {name}", f"{v['patients']} patients, {v['studies']} studies, {v['images']} images")
                 for name, v in splits.items()]
        rows.append(("normal studies", summary["normal_studies"]))
        rows.append(("findings", ", ".join(f"{k} {v}" for k, v in summary["findings"].items()) or "none"))
        rows.append(("devices", ", ".join(f"{k} {v}" for k, v in summary["devices"].items()) or "none"))
        rows.append(("faults", ", ".join(f"{k} {v}" for k, v in summary["faults"].items()) or "none"))
        rows.append(("MS-CXR", f"{summary['ms_cxr']['rows']} boxes, {summary['ms_cxr']['phrases']} phrases"))
        rows.append(("CheXpert 5x200", ", ".join(f"{k} {v}" for k, v in summary["chexpert_5x200"].items())))
        rows.append(("time", f"{elapsed:.1f} s with {summary['workers']} worker(s) "
                              f"({summary['studies'] / max(elapsed, 1e-9):.1f} studies/s)"))
        print_table("synthesize", rows)
