"""`limitr preprocess`: a MIMIC-CXR-JPG root (real or synthetic), an IU X-ray root or a CSV
manifest (``preprocess.source``) to Parquet shards.

Reads the ``preprocess`` section. Writes ``--out`` atomically: ``{train,validate,test}/
part-NNNNN.parquet``, ``grounding.parquet`` and ``class_retrieval.parquet`` when their CSVs
are given, and ``report.json`` (every skipped or degraded study, by reason). For IU and
manifests also ``class_retrieval.parquet`` (built from the test split) and ``split.csv``.

Several jobs can share the work with ``--num-shards K --shard-index I`` (by patient), each
writing its own ``--out``; their part files have disjoint names, so copying the split
folders together gives the output of one full run (the evaluation tables come from part 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import (
    PARAMS_OPTION,
    atomic_dir,
    output_lock,
    optional_path,
    print_table,
    progress_bar,
    stage_errors,
    stage_settings,
)
from limitr.files import write_atomic, write_json


@app.command("preprocess")
def preprocess_stage(
    params: Path = PARAMS_OPTION,
    source: Optional[str] = typer.Option(None, help="mimic | iu | manifest (preprocess.source)"),
    iu_root: Optional[Path] = typer.Option(None, "--iu-root", help="IU X-ray root, Kaggle or Open-i (preprocess.iu_root)"),
    manifest: Optional[Path] = typer.Option(None, help="CSV manifest, one row per image (preprocess.manifest)"),
    mimic_root: Optional[Path] = typer.Option(None, "--mimic-root", help="folder with files/ and the csv.gz files (preprocess.mimic_root)"),
    reports: Optional[Path] = typer.Option(None, help="mimic-cxr-reports.zip or its extracted folder (preprocess.reports)"),
    out: Optional[Path] = typer.Option(None, help="output folder (preprocess.out)"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="long side after resizing, padded to a square (preprocess.image_size)"),
    workers: Optional[int] = typer.Option(None, help="worker processes; default the core count (preprocess.workers)"),
    ms_cxr: Optional[str] = typer.Option(None, "--ms-cxr", help="MS_CXR_Local_Alignment CSV, or 'null' (preprocess.ms_cxr)"),
    class_retrieval: Optional[str] = typer.Option(None, "--class-retrieval", help="CheXpert 5x200 CSV, or 'null' (preprocess.class_retrieval)"),
    num_shards: int = typer.Option(1, "--num-shards", min=1, help="split the work by patient into this many parts"),
    shard_index: int = typer.Option(0, "--shard-index", help="the part this job writes, 0 .. num-shards - 1"),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="studies per Parquet file (preprocess.shard_size)"),
) -> None:
    """Decode, resize and pad the images, parse the reports, write one row per study."""
    with stage_errors() as stage:
        from limitr.data.preprocess import (PreprocessConfig, default_workers, plan_preprocess,
                                            run_preprocess)
        from limitr.data.sources import split_csv
        from limitr.errors import LimitrError

        cfg = stage_settings(params, "preprocess", dict(
            source=source, iu_root=iu_root, manifest=manifest,
            mimic_root=mimic_root, reports=reports, out=out, image_size=image_size, workers=workers,
            ms_cxr=ms_cxr, class_retrieval=class_retrieval, shard_size=shard_size,
        )).preprocess
        if not 0 <= shard_index < num_shards:
            raise LimitrError(f"--shard-index must be in 0 .. {num_shards - 1} (--num-shards {num_shards}), got {shard_index}")
        out_dir = Path(cfg.out)
        config = PreprocessConfig(
            mimic_root=Path(cfg.mimic_root),
            reports=Path(cfg.reports),
            image_size=cfg.image_size,
            workers=cfg.workers or default_workers(),
            shard_size=cfg.shard_size,
            num_shards=num_shards,
            shard_index=shard_index,
            ms_cxr=optional_path(cfg.ms_cxr),
            class_retrieval=optional_path(cfg.class_retrieval),
            max_pixels=cfg.max_pixels,
            source=cfg.source,
            iu_root=optional_path(cfg.iu_root),
            iu_layout=cfg.iu_layout,
            iu_images=optional_path(cfg.iu_images),
            iu_projections=optional_path(cfg.iu_projections),
            manifest=optional_path(cfg.manifest),
            manifest_root=optional_path(cfg.manifest_root),
            manifest_columns=tuple(cfg.manifest_columns.items()),
            split_fractions=tuple(cfg.split_fractions),
            split_seed=cfg.split_seed,
        )
        plan = plan_preprocess(config)
        stage.enter_context(output_lock(out_dir))
        with atomic_dir(out_dir) as tmp:
            with progress_bar(plan.n_units, "preprocess", unit="study") as bar:
                report = run_preprocess(plan, tmp, progress=bar.update)
            write_json(tmp / "report.json", report)
            if plan.source_info is not None and shard_index == 0:
                write_atomic(tmp / "split.csv", split_csv(plan.split_rows))

        rows: list[tuple[str, object]] = [
            ("studies", report["studies_total"]),
            ("kept", report["studies_kept"]),
        ]
        if "source" in report:  # IU X-ray or a manifest
            src = report["source"]
            rows.insert(0, ("source", f"{src['name']} {src.get('layout', '')} split {src['split_fractions']}"
                                      f" seed {src['split_seed']}".replace("  ", " ")))
            rows += [(f"rows dropped: {k}", len(v)) for k, v in report.get("rows_dropped", {}).items()]
        rows += [(f"skipped: {k}", len(v)) for k, v in report["skipped"].items()]
        rows += [(f"degraded: {k}", len(v)) for k, v in report["degraded"].items()]
        for name, total in (("grounding", "phrases_total"), ("class_retrieval", "items_total")):
            if name in report:
                sec = report[name]
                kept = sec["phrases_kept" if name == "grounding" else "items_kept"]
                rows.append((name, f"{kept} of {sec[total]} kept"))
        print_table(f"preprocess -> {out_dir}", rows)
