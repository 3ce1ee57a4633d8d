"""The training summary ``train.json`` (final and best validation figures, the run's extent).

The per-step and per-epoch curves are not written here: the loop hands each row to its
callbacks (``TrainCallbacks``), and the train stage logs them with DVCLive (stages/live.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from limitr.files import write_json

SUMMARY_FILE = "train.json"


class CurveWriter:
    """Writes ``train.json`` into ``folder``; does nothing when ``folder`` is None."""

    def __init__(self, folder: Optional[Path]) -> None:
        self.folder = None if folder is None else Path(folder)

    def write_summary(self, summary: Mapping[str, object]) -> None:
        if self.folder is not None:
            write_json(self.folder / SUMMARY_FILE, dict(summary))
