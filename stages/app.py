"""Console entry point: ``limitr <stage>`` and ``python -m stages <stage>``."""

import importlib
import sys

import typer

from stages.cli import app

# Each module registers one command on ``app`` when imported.
STAGE_MODULES = ("synthesize", "sheet", "preprocess", "tokenize", "train", "embed", "evaluate")

for _name in STAGE_MODULES:
    importlib.import_module(f"stages.{_name}")


def main() -> None:
    from stages.common import effective_defaults

    # Every option's default is its value in the params file in use, so --help shows it.
    app(default_map=effective_defaults(sys.argv[1:], typer.main.get_command(app)))
