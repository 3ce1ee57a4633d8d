"""``limitr synthesize``: write the synthetic MIMIC-CXR-shaped data set (the default input)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import PARAMS_OPTION, atomic_dir, output_lock, print_table, progress_bar, stage_errors, stage_settings


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
    with stage_errors() as stage:
        settings = stage_settings(params, "synthesize", dict(
            out=out, n_studies=n_studies, fault_rate=fault_rate, image_scale=image_scale, workers=workers,
        ), base_overrides=dict(seed=seed))
        cfg = settings.synthesize
        out_dir, n, seed_value = Path(cfg.out), cfg.n_studies, settings.base.seed
        rate, scale, n_workers = cfg.fault_rate, cfg.image_scale, cfg.workers

        from limitr.synthetic import generate

        stage.enter_context(output_lock(out_dir))
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
