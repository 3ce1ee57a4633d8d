"""``limitr sheet``: draw example studies of a generated data set to a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.cli import app
from stages.common import PARAMS_OPTION, stage_errors, stage_settings


@app.command()
def sheet(
    params: Path = PARAMS_OPTION,
    root: Optional[Path] = typer.Option(
        None, "--root", help="A folder written by `limitr synthesize`. Default: synthesize.out."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    n: int = typer.Option(4, "--n", min=1, help="Number of studies (rows) to show."),
    seed: int = typer.Option(0, "--seed", help="Seed for choosing the studies."),
) -> None:
    """Draw frontal and lateral images side by side with their ground-truth boxes and the
    report beside them, for a few studies chosen to show many kinds of finding."""
    with stage_errors():
        root_dir = Path(stage_settings(params, "synthesize", dict(out=root)).synthesize.out)

        from limitr.synthetic import render_sheet

        path = render_sheet(root_dir, out, n=n, seed=seed)
        typer.echo(f"wrote {path}")
