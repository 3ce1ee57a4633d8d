"""Training curves for ``dvc plots`` and the summary ``train.json`` for ``dvc metrics``.

``train_steps.tsv`` gets a row per optimizer step and ``train_epochs.tsv`` a row per epoch,
appended as training goes; a resumed run first rewrites both from the history kept in the
checkpoint, so rows of an epoch that was cut short never appear twice.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from limitr.train.checkpoint import write_json
from limitr.train.validate import RECALL_KEYS

STEPS_FILE = "train_steps.tsv"
EPOCHS_FILE = "train_epochs.tsv"
SUMMARY_FILE = "train.json"

STEP_COLUMNS: tuple[str, ...] = (
    "step",
    "epoch",
    "loss",
    "loss_local_external",
    "loss_local_internal",
    "loss_global",
    "grad_norm",
    "lr",
    "image_lr",
    "head_lr",
    "studies_per_s",
)
EPOCH_COLUMNS: tuple[str, ...] = ("epoch", "step", "train_loss", *RECALL_KEYS, "r_sum", "lr", "image_lr", "head_lr")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _line(row: Mapping[str, object], columns: Sequence[str]) -> str:
    return "\t".join(_cell(row.get(c)) for c in columns) + "\n"


class CurveWriter:
    """Writes the curves into ``folder``; does nothing when ``folder`` is None."""

    def __init__(self, folder: Optional[Path]) -> None:
        self.folder = None if folder is None else Path(folder)

    def _rewrite(self, name: str, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
        assert self.folder is not None
        path = self.folder / name
        tmp = path.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        with tmp.open("w") as fh:
            fh.write("\t".join(columns) + "\n")
            for row in rows:
                fh.write(_line(row, columns))
        os.replace(tmp, path)

    def reset(self, steps: Sequence[Mapping[str, object]], epochs: Sequence[Mapping[str, object]]) -> None:
        """Start both files afresh with the rows given (none for a new run)."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._rewrite(STEPS_FILE, STEP_COLUMNS, steps)
        self._rewrite(EPOCHS_FILE, EPOCH_COLUMNS, epochs)

    def add_step(self, row: Mapping[str, object]) -> None:
        if self.folder is not None:
            with (self.folder / STEPS_FILE).open("a") as fh:
                fh.write(_line(row, STEP_COLUMNS))

    def add_epoch(self, row: Mapping[str, object]) -> None:
        if self.folder is not None:
            with (self.folder / EPOCHS_FILE).open("a") as fh:
                fh.write(_line(row, EPOCH_COLUMNS))

    def write_summary(self, summary: Mapping[str, object]) -> None:
        if self.folder is not None:
            write_json(self.folder / SUMMARY_FILE, dict(summary))


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a curve file as dicts of strings (for tests and tools)."""
    lines = Path(path).read_text().splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]
