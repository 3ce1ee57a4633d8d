"""`limitr embed`: run the trained encoders once over the evaluation tables.

Reads the ``embed`` and ``base`` sections. Writes ``--out`` (default data/embeddings):
``test/``, ``grounding/``, ``class_retrieval/`` and ``prompts/`` with ``images-*.safetensors``
and ``texts-*.safetensors`` (global and local features with masks, keyed by study_id,
phrase_id, item_id and prompt index), and ``report.json`` (counts, records left out by
reason, tables skipped and why, the crop settings used).
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
    print_table,
    progress_bar,
    resolve_device,
    stage_errors,
    stage_settings,
)
from limitr.files import write_json


@app.command("embed")
def embed_stage(
    params: Path = PARAMS_OPTION,
    model: Optional[Path] = typer.Option(None, help="train stage output: best/ weights and config.json (embed.model)"),
    shards: Optional[Path] = typer.Option(None, help="study shards and tables from preprocess (embed.shards)"),
    tokens: Optional[Path] = typer.Option(None, help="token shards and tokenizer/ from tokenize (embed.tokens)"),
    out: Optional[Path] = typer.Option(None, help="output folder for the embeddings (embed.out)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="items per encoder call (embed.batch_size)"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N (base.device)"),
) -> None:
    """Embed the test split, the grounding and class-retrieval tables and the text prompts."""
    with stage_errors() as stage:
        import torch

        from limitr.eval.embed import EmbedSettings, load_model, model_fingerprint, plan_tasks, resolve_checkpoint

        chosen = stage_settings(params, "embed", dict(
            model=model, shards=shards, tokens=tokens, out=out, batch_size=batch_size,
        ), base_overrides=dict(device=device))
        cfg = chosen.embed
        dev = resolve_device(chosen.base.device)  # before any work
        model_dir, shards_dir, tokens_dir, out_dir = (Path(cfg.model), Path(cfg.shards), Path(cfg.tokens),
                                                      Path(cfg.out))
        size = cfg.batch_size

        stage.enter_context(output_lock(out_dir))
        tasks = plan_tasks(shards_dir, tokens_dir)
        net, run_config = load_model(model_dir, dev)
        train_cfg = run_config["train"]
        settings = EmbedSettings(
            crop_size=int(train_cfg["crop_size"]),
            upsample_to=train_cfg.get("upsample_to"),
            batch_size=size,
            rows_per_file=cfg.rows_per_file,
            device=dev,
        )
        report: dict = {
            "model": str(model_dir),
            "model_fingerprint": model_fingerprint(resolve_checkpoint(model_dir)[0]),
            "settings": {"crop_size": settings.crop_size, "upsample_to": settings.upsample_to},
            "tables": {},
            "skipped": {},
        }
        with torch.no_grad(), atomic_dir(out_dir) as tmp:
            for task in tasks:
                if task.skipped is not None or task.run is None:
                    report["skipped"][task.name] = task.skipped
                    continue
                with progress_bar(task.total, f"embed {task.name}", unit="item") as bar:
                    report["tables"][task.name] = task.run(net, tmp / task.name, settings, bar.update)
            write_json(tmp / "report.json", report)

        rows = []
        for name, table in report["tables"].items():
            left_out = sum(int(v) for v in (table.get("skipped") or {}).values())
            rows.append((name, f"{table.get('images', 0)} images, {table.get('texts', 0)} texts, {left_out} left out"))
        rows += [(name, f"skipped: {why}") for name, why in report["skipped"].items()]
        print_table(f"embeddings written to {out_dir}", rows)
