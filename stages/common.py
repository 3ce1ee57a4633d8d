"""What every stage command shares: params sections, option overrides, fatal errors,
atomic outputs, progress bars and summary tables.

A stage command looks like this::

    @app.command()
    def synthesize(
        params: Path = PARAMS_OPTION,
        out: Optional[Path] = typer.Option(None, help="..."),
    ) -> None:
        with stage_errors():
            cfg = section(params, "synthesize")
            out = override(out, cfg, "out")
            ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import typer
import yaml

from limitr.errors import LimitrError

PARAMS_OPTION = typer.Option(
    Path("params.yaml"),
    "--params",
    help="params file whose stage section gives this command's defaults; options override it.",
)


def load_params(path: Path) -> dict:
    """The whole params file as a dict; a missing file gives an empty dict (all defaults)."""
    path = Path(path)
    if not path.exists():
        if path == Path("params.yaml"):
            return {}
        raise LimitrError(f"params file {path} does not exist")
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise LimitrError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LimitrError(f"params file {path} must hold a mapping of sections")
    return data


def section(params_path: Path, name: str) -> dict:
    """One section of the params file (``{}`` when absent)."""
    value = load_params(params_path).get(name) or {}
    if not isinstance(value, dict):
        raise LimitrError(f"section '{name}' of {params_path} must be a mapping")
    return value


def base(params_path: Path) -> dict:
    """The shared ``base`` section (seed, device)."""
    return section(params_path, "base")


def override(cli_value: Any, cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The command-line value when given, else the params value, else ``default``."""
    if cli_value is not None:
        return cli_value
    value = cfg.get(key, default)
    return default if value is None and default is not None else value


def optional_path(value: Any) -> Optional[Path]:
    """``None`` for null, empty or the words none/null; a Path otherwise."""
    if value is None:
        return None
    text = str(value).strip()
    if text == "" or text.lower() in {"none", "null"}:
        return None
    return Path(text)


def fail(message: str) -> None:
    """Print one line to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


@contextlib.contextmanager
def stage_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line and exit code 1, no traceback."""
    try:
        yield
    except LimitrError as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"file not found: {exc.filename or exc}")
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(code=130)


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Write a folder under a temporary name beside ``out``; replace ``out`` on success only."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename), keys in a stable order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def progress_bar(total: Optional[int], desc: str, unit: str = "it"):
    """A tqdm bar on stderr (quiet when stderr is not a terminal and LIMITR_NO_PROGRESS is set)."""
    from tqdm.auto import tqdm

    disable = bool(os.environ.get("LIMITR_NO_PROGRESS"))
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    """A two-column summary table on stdout."""
    if not rows:
        return
    width = max(len(str(k)) for k, _ in rows)
    typer.echo(title)
    for key, value in rows:
        typer.echo(f"  {str(key).ljust(width)}  {value}")


def resolve_device(name: Optional[str]) -> str:
    """'auto' -> cuda when available, else cpu; anything else is passed through."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)
