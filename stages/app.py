"""Console entry point: ``limitr <stage>`` and ``python -m stages <stage>``."""

import importlib

from stages.cli import app

# Each module registers one command on ``app`` when imported.
STAGE_MODULES = ("synthesize", "sheet", "preprocess", "tokenize", "train", "embed", "evaluate",
                 # commands over a trained model, not DVC stages
                 "search", "ground", "explore")

for _name in STAGE_MODULES:
    importlib.import_module(f"stages.{_name}")


def main() -> None:
    app()
