"""Console entry point: ``limitr <stage>`` and ``python -m stages <stage>``."""

import importlib

from stages.cli import app

# Each module registers one command on ``app`` when imported.
STAGE_MODULES = ("synthesize", "sheet", "preprocess", "tokenize", "train", "embed", "evaluate")

for _name in STAGE_MODULES:
    try:
        importlib.import_module(f"stages.{_name}")
    except ModuleNotFoundError as exc:  # a stage still being written does not break the others
        if exc.name != f"stages.{_name}":
            raise


def main() -> None:
    app()
