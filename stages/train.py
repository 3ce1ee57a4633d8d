"""`limitr train`: train LIMITR on the token and image shards, validate every epoch.

Reads the ``model``, ``train`` and ``base`` sections. Writes ``--out`` (best/ and last/
checkpoints, config.json, report.json) and, into ``--metrics``, train.json plus the step and
epoch curves logged with DVCLive under ``training/`` (stages/live.py). Runs unchanged under
``torchrun --nproc_per_node N`` (data-parallel; only rank 0 prints and writes);
``train.batch_size`` is the global batch over all processes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.live import LiveCurves, live_callbacks
from stages.common import (
    PARAMS_OPTION,
    output_lock,
    print_table,
    progress_bar,
    resolve_device,
    stage_errors,
    stage_settings,
)


#: The DVCLive folder under --metrics (see stages/live.py).
CURVES_FOLDER = "training"


def training_seed(train_sec: dict, base_sec: dict) -> int:
    """``train.seed`` where set, else ``base.seed`` (which also seeds the synthetic data), else 0.
    A training seed of its own lets a seed study keep the same data."""
    from limitr.errors import LimitrError

    value = train_sec.get("seed")
    if value is None:
        value = base_sec.get("seed", 0) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LimitrError(f"train.seed / base.seed must be a non-negative integer, got {value!r}")
    return value


def _close(curves, bar, ctx) -> None:
    from limitr.train.distributed import shutdown_distributed

    if curves is not None:
        curves.close()
    if bar is not None:
        bar.close()
    shutdown_distributed(ctx)


@app.command("train")
def train_stage(
    params: Path = PARAMS_OPTION,
    shards: Optional[Path] = typer.Option(None, help="study shards folder (train.shards)"),
    tokens: Optional[Path] = typer.Option(None, help="token shards folder (train.tokens)"),
    out: Optional[Path] = typer.Option(None, help="run folder for checkpoints (train.out)"),
    epochs: Optional[int] = typer.Option(None, help="train.epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="global batch over all processes (train.batch_size)"),
    resume: Optional[bool] = typer.Option(
        None,
        "--resume/--no-resume",
        help="continue out/last, or start afresh; default: continue an unfinished run with the same settings",
    ),
    metrics: Path = typer.Option(Path("metrics"), help="folder for train.json and the DVCLive curves (training/)"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N (base.device)"),
) -> None:
    """Train the model; validation r_sum picks the best epoch and drives the plateau schedule (train.schedule)."""
    with stage_errors() as stage:
        from limitr.train.allocator import tune_allocator

        tune_allocator()  # before the first tensor: freed step memory stays for the next step
        from limitr.model.config import ModelConfig
        from limitr.text.tokenize import check_token_vocabulary
        from limitr.train.distributed import init_distributed, shutdown_distributed
        from limitr.train.loop import TrainCallbacks, TrainConfig, train

        settings = stage_settings(params, "train", dict(
            shards=shards, tokens=tokens, out=out, epochs=epochs, batch_size=batch_size,
        ), base_overrides=dict(device=device))
        device_name = resolve_device(settings.base.device)  # before any work
        model_cfg = ModelConfig.from_dict(settings.model.to_config_dict())
        train_cfg = TrainConfig.from_dict(settings.train.to_config_dict())
        shards_dir, tokens_dir, out_dir = (Path(settings.train.shards), Path(settings.train.tokens),
                                           Path(settings.train.out))
        seed = training_seed(settings.train.model_dump(), settings.base.model_dump())
        check_token_vocabulary(tokens_dir)

        ctx, dev = init_distributed(device_name)
        if ctx.is_main:  # one writer: the main process of this run, and no other run
            stage.enter_context(output_lock(out_dir))
        bar = progress_bar(None, "train", unit="step") if ctx.is_main else None
        callbacks = TrainCallbacks()
        if bar is not None:

            def on_start(total: int, done: int) -> None:
                bar.reset(total=total)
                bar.update(done)

            def on_step(row: dict) -> None:
                bar.set_postfix(loss=f"{row['loss']:.4f}", studies_s=f"{row['studies_per_s']:.1f}", refresh=False)
                bar.update(1)  # draws the bar with this step's figures

            def on_epoch(row: dict) -> None:
                bar.write(
                    f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                    f"validation r_sum {row['r_sum']:.1f} (i2t R@1 {row['i2t_R@1']:.1f}, "
                    f"t2i R@1 {row['t2i_R@1']:.1f})"
                )

            def on_compile(line: str) -> None:
                bar.write(f"local alignment: {line}")

            callbacks = TrainCallbacks(on_start=on_start, on_step=on_step, on_epoch=on_epoch, on_compile=on_compile)
        curves = LiveCurves(Path(metrics) / CURVES_FOLDER) if ctx.is_main else None
        callbacks = live_callbacks(curves, callbacks)
        try:
            result = train(
                model_cfg,
                train_cfg,
                shards_dir,
                tokens_dir,
                out_dir,
                seed=seed,
                device=dev,
                metrics_dir=metrics,
                resume=resume,
                dist=ctx,
                callbacks=callbacks,
                compile_cache=Path(settings.train.compile_cache),
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped training is the one to report
                _close(curves, bar, ctx)
            raise
        _close(curves, bar, ctx)
        if ctx.is_main:
            s = result.summary
            rows = [
                ("device", f"{dev} x {ctx.world_size}" if ctx.enabled else str(dev)),
                ("studies", f"{s['n_train']} train, {s['n_validate']} validate"),
                ("epochs run", f"{s['epochs_run']}{' (stopped early)' if s['stopped_early'] else ''}"),
                ("best epoch", s["best_epoch"]),
                ("best r_sum", f"{s['best'].get('r_sum', float('nan')):.1f} (chance {s['chance_r_sum']:.1f})"),
                ("final r_sum", f"{s['final'].get('r_sum', float('nan')):.1f}"),
                ("seconds", s["seconds"]),
                ("local alignment", "compiled" if (s.get("compile") or {}).get("compiled") else "eager"),
                ("model", str(out_dir / "best")),
            ]
            if result.resumed_from_epoch is not None:
                rows.insert(0, ("resumed after epoch", result.resumed_from_epoch))
            print_table("train", rows)
