"""The Typer application every stage module registers its command on."""

import typer

app = typer.Typer(
    name="limitr",
    help=(
        "LIMITR pipeline stages. Each command reads its defaults from a section of "
        "params.yaml (--params) and takes options that override them. The usual entry "
        "point is `dvc repro`, which runs the stages in order."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
