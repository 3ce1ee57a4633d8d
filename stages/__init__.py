"""The pipeline's stage commands: one Typer command per DVC stage, one app (``limitr``)."""
