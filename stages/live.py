"""Training curves through DVCLive, DVC's own experiment logger.

The training loop knows nothing of DVCLive: it calls the callbacks the train stage gives
it, and :class:`LiveCurves` turns them into DVCLive's files under ``metrics/training/``:

    plots/metrics/per_step/<name>.tsv    one row per optimizer step (x: the global step)
    plots/metrics/per_epoch/<name>.tsv   one row per epoch (x: the epoch, 1-based)
    metrics.json                         the latest value of each curve

``dvc plots show``, ``dvc exp show`` and the DVC extension for VS Code read them through the
``plots:`` entries of dvc.yaml. A resumed run starts the files afresh from the history its
checkpoint keeps, so the rows of an epoch that was cut short never appear twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

#: Curve groups (folders under plots/metrics/; not "step", which DVCLive's summary uses).
STEP_KIND, EPOCH_KIND = "per_step", "per_epoch"
#: The step row's curves (the loop's step row less its ``step`` and ``epoch`` counters).
STEP_CURVES: tuple[str, ...] = (
    "loss", "loss_local_external", "loss_local_internal", "loss_global", "grad_norm",
    "lr", "image_lr", "head_lr", "studies_per_s",
)
#: The epoch row's curves (less its ``epoch`` and ``step`` counters).
EPOCH_CURVES: tuple[str, ...] = (
    "train_loss", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_sum",
    "lr", "image_lr", "head_lr",
)


class LiveCurves:
    """The train stage's curve logger: ``history`` (replayed at the start), ``step``,
    ``epoch``, ``close``. Writes into ``folder``, replaced when the loop starts logging (not
    before: a run that fails while loading its data leaves the old curves as they were)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._live = None

    @property
    def live(self):
        if self._live is None:
            logging.getLogger("dvclive").setLevel(logging.WARNING)
            from dvclive import Live

            self._live = Live(str(self.folder), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)
        return self._live

    def _log(self, prefix: str, x: int, row: Mapping[str, object], names: Sequence[str]) -> None:
        self.live.step = int(x)
        for name in names:
            value = row.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.live.log_metric(f"{prefix}/{name}", float(value))

    def step(self, row: Mapping[str, object]) -> None:
        self._log(STEP_KIND, int(row["step"]), row, STEP_CURVES)  # type: ignore[arg-type]

    def epoch(self, row: Mapping[str, object]) -> None:
        self._log(EPOCH_KIND, int(row["epoch"]), row, EPOCH_CURVES)  # type: ignore[arg-type]
        self.live.make_summary()

    def history(self, steps: Sequence[Mapping[str, object]], epochs: Sequence[Mapping[str, object]]) -> None:
        for row in steps:
            self.step(row)
        for row in epochs:
            self.epoch(row)

    def close(self) -> None:
        if self._live is not None:
            self._live.end()


def read_curve(folder: Path, kind: str, name: str) -> list[tuple[int, float]]:
    """``(x, value)`` rows of one curve that :class:`LiveCurves` wrote (for tests and tools)."""
    path = Path(folder) / "plots" / "metrics" / kind / f"{name}.tsv"
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    return [(int(r["step"]), float(r[name])) for r in rows]


def live_callbacks(curves: Optional[LiveCurves], callbacks=None):
    """``callbacks`` (a TrainCallbacks) with the curve logging added in front of its own hooks."""
    from limitr.train.loop import TrainCallbacks

    base = callbacks or TrainCallbacks()
    if curves is None:
        return base

    def chain(first, second):
        if second is None:
            return first

        def both(*args):
            first(*args)
            second(*args)

        return both

    return TrainCallbacks(
        on_start=base.on_start,
        on_step=chain(curves.step, base.on_step),
        on_epoch=chain(curves.epoch, base.on_epoch),
        on_history=chain(curves.history, getattr(base, "on_history", None)),
        on_compile=base.on_compile,
    )
