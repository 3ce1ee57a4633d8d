"""Console entry point: ``limitr <stage>`` and ``python -m stages <stage>``."""

import importlib
import sys

import typer

try:  # typer vendors its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - typer releases that use click itself
    from click import exceptions as click_errors

from stages.cli import app

# Each module registers one command on ``app`` when imported.
STAGE_MODULES = ("synthesize", "sheet", "preprocess", "tokenize", "train", "embed", "evaluate", "transfer")
# Commands over a trained model (limitr/use) or over evaluated runs (compare, seeds), not DVC stages.
USE_MODULES = ("search", "ground", "explore", "compare", "seeds")

for _name in (*STAGE_MODULES, *USE_MODULES):
    importlib.import_module(f"stages.{_name}")


def main() -> None:
    from stages.common import effective_defaults

    group = typer.main.get_command(app)
    try:
        # Every option's default is its value in the params file in use, so --help shows it.
        code = app(default_map=effective_defaults(sys.argv[1:], group), standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        code = 0
    except click_errors.UsageError as exc:
        # A mistyped option or value: one line, like every other user mistake.
        command = exc.ctx.command_path if exc.ctx is not None else "limitr"
        typer.echo(f"error: {exc.format_message()} (see {command} --help)", err=True)
        code = 1
    except typer.Abort:
        typer.echo("interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
