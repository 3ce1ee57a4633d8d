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
import errno
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import typer
import yaml

from limitr.errors import LimitrError
from limitr.files import WriteError, write_failure, writing
from limitr.settings import Settings, check_device_string, update_section, validate_settings

PARAMS_OPTION = typer.Option(
    Path("params.yaml"),
    "--params",
    help="params file whose stage section gives this command's defaults; options override it.",
)


def _read_params_file(path: Path) -> Optional[dict]:
    """The params file as a dict; None for a missing default ``params.yaml`` (all defaults)."""
    path = Path(path)
    if path.is_dir():
        raise LimitrError(f"--params {path} is a folder; give a params YAML file such as {path / 'params.yaml'}")
    if not path.exists():
        if path == Path("params.yaml"):
            return None
        raise LimitrError(f"params file {path} does not exist; give an existing file with --params")
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise LimitrError(f"params file {path} is not valid YAML{line}: fix its syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LimitrError(f"params file {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise LimitrError(f"params file {path} must hold a mapping of sections (base, synthesize, ...)")
    return data


def load_params(path: Path) -> dict:
    """The whole params file as a dict; a missing file gives an empty dict (all defaults)."""
    return _read_params_file(path) or {}


def load_settings(path: Path) -> Settings:
    """The validated settings of a params file: every key checked, every default filled in."""
    return validate_settings(_read_params_file(path), str(path))


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def stage_settings(params_path: Path, name: str, overrides: Optional[Mapping[str, Any]] = None,
                   base_overrides: Optional[Mapping[str, Any]] = None) -> Settings:
    """The validated settings with a command's options applied (options given as None keep
    the params value); a bad option value is named like a bad params value."""
    settings = load_settings(params_path)
    settings = update_section(settings, name, {k: _plain(v) for k, v in (overrides or {}).items()},
                              "command-line option")
    return update_section(settings, "base", {k: _plain(v) for k, v in (base_overrides or {}).items()},
                          "command-line option")


def section(params_path: Path, name: str) -> dict:
    """One validated section of the params file, every key present (defaults filled in)."""
    return getattr(load_settings(params_path), name).model_dump(by_alias=True)


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


def _known_input_error(exc: BaseException) -> Optional[str]:
    """One line for a damaged input file read by a library that does not name it (a Parquet
    or safetensors file); None for anything else."""
    kind = type(exc)
    if kind.__module__.startswith("pyarrow"):
        return (f"a Parquet file could not be read ({str(exc).splitlines()[0] if str(exc) else kind.__name__}): "
                "an input folder is damaged or truncated; rerun the stage that wrote it")
    if kind.__name__ == "SafetensorError":
        return (f"a model.safetensors file could not be read ({str(exc).splitlines()[0]}): it is damaged "
                "or truncated; rerun train, or pass --no-resume")
    return None


def stage_name() -> str:
    """The command being run (``train``, ``preprocess``, ...), for messages."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - typer releases that use click itself
        from click import get_current_context
    ctx = get_current_context(silent=True)
    return ctx.info_name if ctx is not None and ctx.info_name else "limitr"


#: What a rerun keeps after a failed write, by stage (the others write their output whole).
AFTER_WRITE_FAILURE = {
    "train": "finished epochs are kept: the rerun resumes after the last one",
}


def _write_error_line(exc: WriteError) -> str:
    stage = stage_name()
    kept = AFTER_WRITE_FAILURE.get(stage, "nothing half-written is left under its name")
    return f"{stage}: {exc} ({kept})"


@contextlib.contextmanager
def stage_errors() -> Iterator[contextlib.ExitStack]:
    """Turn the errors a user can fix into one line and exit code 1, no traceback. A failed
    write (a full disk, a read-only folder) names the stage, the path and what to free.

    Yields an ExitStack closed before the errors are reported: a stage holds its output
    folder with ``stage.enter_context(output_lock(out))`` once it knows the folder."""
    try:
        with contextlib.ExitStack() as stack:
            yield stack
    except WriteError as exc:
        fail(_write_error_line(exc))
    except LimitrError as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"file not found: {exc.filename or exc}")
    except IsADirectoryError as exc:
        fail(f"{exc.filename or exc} is a folder where a file was expected")
    except Exception as exc:  # noqa: BLE001 - only the kinds below; anything else is a bug
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # a writer outside limitr.files: the path as the OS names it, or the working folder
            failure = write_failure(exc, exc.filename or Path.cwd())
            assert failure is not None
            fail(_write_error_line(failure))
        message = _known_input_error(exc)
        if message is None:
            raise
        fail(message)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(code=130)


def _remove_stale_temporaries(out: Path) -> None:
    """Remove what a killed :func:`atomic_dir` left beside ``out`` (``.NAME.tmp-*`` and
    ``.NAME.old-*``). Called under :func:`output_lock`: no live writer owns them."""
    for leftover in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Write a folder under a temporary name beside ``out``; replace ``out`` on success only.
    A write that fails (a full disk) ends as a :class:`WriteError` naming ``out``, and the
    temporary folder is removed, so ``out`` stays as it was."""
    out = Path(out)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    try:
        with writing(out):  # a failure is classified before its partial files go
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


def lock_paths(out: Path) -> tuple[Path, Path]:
    """The lock file of an output folder and the record of its holder: ``.NAME.lock`` and
    ``.NAME.lock.owner`` beside the folder, not in it, so that DVC never hashes them into the
    output (``persist`` outputs included) and removing the output leaves the lock alone."""
    out = Path(out)
    return out.parent / f".{out.name}.lock", out.parent / f".{out.name}.lock.owner"


@contextlib.contextmanager
def output_lock(out: Path, stage: Optional[str] = None) -> Iterator[None]:
    """Hold the one-writer lock of output folder ``out`` for the block.

    The lock is the operating system's (``filelock``: ``flock`` on Unix), so the kernel drops
    it when its holder dies, however it dies: a lock a killed run left behind is simply taken.
    A folder another live process holds is refused with one line naming that process (pid,
    host, command, since when) from the record its holder wrote. Leftover temporary folders
    of killed runs beside ``out`` are removed once the lock is held."""
    import datetime
    import json
    import socket

    from filelock import FileLock, Timeout

    out = Path(out)
    lock_file, owner_file = lock_paths(out)
    with writing(lock_file):
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        try:
            owner = json.loads(owner_file.read_text())
            who = (f"{owner.get('stage', 'another command')} (pid {owner.get('pid')} on "
                   f"{owner.get('host')}, since {owner.get('since')})")
        except (OSError, ValueError, AttributeError):
            who = "another process (it has not recorded itself yet)"
        raise LimitrError(
            f"{out} is being written by {who}; wait for it to finish or stop it, "
            f"or give this run another output folder") from None
    try:
        from limitr.files import write_json

        write_json(owner_file, {
            "stage": stage or stage_name(), "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        })
        _remove_stale_temporaries(out)
        yield
    finally:
        owner_file.unlink(missing_ok=True)
        lock.release()


#: In a log (stderr not a terminal): a line at most every this share of the total ...
LOG_EVERY_FRACTION = 0.05
#: ... or, when the total is unknown or the work is slow, every this many seconds.
LOG_EVERY_SECONDS = 30.0


class LogProgress:
    """Progress for a log file: one plain line per few percent or per 30 seconds, whichever
    comes first, and a last line on close. Offers the part of tqdm's API the stages use."""

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", file: Any = None,
                 every_fraction: float = LOG_EVERY_FRACTION, every_seconds: float = LOG_EVERY_SECONDS,
                 clock: Any = None) -> None:
        import time

        self.total, self.desc, self.unit = total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.every_fraction, self.every_seconds = every_fraction, every_seconds
        self.clock = clock or time.monotonic
        self.n = 0
        self.postfix = ""
        self.closed = False
        self._start = self.clock()
        self._last_time = self._start
        self._last_n = 0

    def _emit(self) -> None:
        elapsed = self.clock() - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}, {elapsed:.0f} s, {rate:.3g} {self.unit}/s{extra}",
              file=self.file, flush=True)
        self._last_time, self._last_n = self.clock(), self.n

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = self.clock()
        step = self.total * self.every_fraction if self.total else None
        if (step is not None and self.n - self._last_n >= step) or now - self._last_time >= self.every_seconds:
            self._emit()

    def reset(self, total: Optional[int] = None) -> None:
        self.total, self.n, self._last_n = total, 0, 0

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        """The last line, when there is news since the previous one: nothing when no work
        was done (a stage that stops on bad input ends with its one error line)."""
        if not self.closed:
            self.closed = True
            if self.n != self._last_n:
                self._emit()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: Optional[int], desc: str, unit: str = "it"):
    """A tqdm bar on a terminal; in a log (stderr not a terminal) a :class:`LogProgress`
    line every few percent or 30 seconds; nothing at all when LIMITR_NO_PROGRESS is set."""
    from tqdm.auto import tqdm

    if os.environ.get("LIMITR_NO_PROGRESS"):
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=True)
    if not sys.stderr.isatty():
        return LogProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    """A two-column summary table on stdout."""
    if not rows:
        return
    width = max(len(str(k)) for k, _ in rows)
    typer.echo(title)
    for key, value in rows:
        typer.echo(f"  {str(key).ljust(width)}  {value}")


def resolve_device(name: Optional[str]) -> str:
    """Check a device string before any work: 'auto' -> cuda when available, else cpu;
    cuda, cuda:N and mps only where torch sees that device. A LimitrError otherwise."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = check_device_string(str(name))
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LimitrError(f"device {text} asked for, but torch sees no CUDA GPU on this machine "
                              "(no driver, or a CPU-only torch); use --device cpu or set base.device: auto")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise LimitrError(f"device {text} asked for, but this machine has {torch.cuda.device_count()} "
                              f"CUDA GPU(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LimitrError("device mps asked for, but torch sees no Apple GPU here; use --device cpu or auto")
    return text


#: Options whose setting is not ``<command's section>.<option name>`` (None: not a setting).
OPTION_SETTINGS: dict[tuple[str, str], Optional[tuple[str, str]]] = {
    ("sheet", "root"): ("synthesize", "out"),
    ("sheet", "out"): None,  # the PNG to write
    ("sheet", "seed"): None,  # picks the studies shown
    ("synthesize", "seed"): ("base", "seed"),
}


def params_path_from_argv(argv: list[str]) -> Path:
    """The ``--params`` a command line names (params.yaml when none)."""
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--params="):
            return Path(arg.split("=", 1)[1])
    return Path("params.yaml")


def effective_defaults(argv: list[str], group: Any) -> dict:
    """Click's ``default_map`` for every command of ``group``: each option's value in the
    params file the command line names (or the schema default), so ``--help`` shows what a
    run would use. An unreadable params file gives no map: the command itself then reports it."""
    try:
        settings = load_settings(params_path_from_argv(argv))
    except LimitrError:
        return {}
    sections = {name: getattr(settings, name).model_dump(by_alias=True) for name in type(settings).model_fields}
    out: dict = {}
    for command_name, command in getattr(group, "commands", {}).items():
        own = "synthesize" if command_name == "sheet" else command_name
        entries = {}
        for param in command.params:
            target: Optional[tuple[str, str]] = None
            if (command_name, param.name) in OPTION_SETTINGS:
                target = OPTION_SETTINGS[(command_name, param.name)]
            elif own in sections and param.name in sections[own]:
                target = (own, param.name)
            elif param.name in sections["base"]:
                target = ("base", param.name)
            if target is not None:
                value = sections[target[0]][target[1]]
                if isinstance(value, (list, tuple, dict)):
                    continue
                entries[param.name] = value
        if entries:
            out[command_name] = entries
    return out
