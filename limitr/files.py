"""Files written whole or not at all: the data to a temporary name beside the target, then a
rename over it, so that a reader (or a killed run's next start) never sees half a file.

A write that fails (a full disk, a quota, a read-only or too small file system) becomes a
:class:`WriteError`: one line naming the path being written and what to free, whichever
library did the writing (Python, pyarrow, torch, safetensors and PIL report a full disk in
different words, torch sometimes with none; see :func:`write_failure`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from limitr.errors import LimitrError

#: errno values that only a write gives: the disk or quota is full, the file too large, the
#: file system read-only.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_WRITE_ONLY_ERRNOS = frozenset({errno.EFBIG, errno.EROFS})
#: How a full disk reads in the messages of libraries that drop the errno (pyarrow keeps it in
#: its text, safetensors' Rust writer says "os error 28", numpy "N requested and M written").
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "errno 28", "disk quota exceeded", "storagefull")
#: Free bytes under which a write that failed without saying why is taken for a full disk
#: (torch.save reports only "unexpected pos A vs B" when the disk fills).
NEARLY_FULL_BYTES = 4 << 20


class WriteError(LimitrError):
    """Writing ``path`` failed; ``disk_full`` when its file system had no room left."""

    def __init__(self, message: str, path: Path, disk_full: bool) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.disk_full = disk_full


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (for the free-space question)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_bytes(path: Union[str, Path]) -> Optional[int]:
    """Bytes a process may still write on the file system holding ``path`` (None if unknown)."""
    try:
        return shutil.disk_usage(_existing(Path(path))).free
    except OSError:
        return None


def write_failure(exc: BaseException, path: Union[str, Path]) -> Optional[WriteError]:
    """The one-line :class:`WriteError` for ``exc`` raised while writing ``path``, or None when
    ``exc`` is not a write failure (a bad input read on the way, a bug). Call it before the
    partial file is removed: a full disk is also recognised by the room left on it."""
    if isinstance(exc, LimitrError) or not isinstance(exc, Exception):
        return None
    path = Path(path)
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    is_os = isinstance(exc, OSError)
    library = is_os or isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError"
    free = free_bytes(path)
    disk_full = code in _DISK_FULL_ERRNOS or any(t in text for t in _DISK_FULL_TEXT) or (
        library and not isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError))
        and free is not None and free < NEARLY_FULL_BYTES)
    if disk_full:
        room = f" ({_size(free)} free there now)" if free is not None else ""
        return WriteError(
            f"no space left on the disk while writing {path}{room}: free space on that file system "
            "or move the output to a disk with room, then rerun", path, True)
    if is_os and code in _WRITE_ONLY_ERRNOS:
        why = "the file system is read-only" if code == errno.EROFS else "the file exceeds the size allowed"
        return WriteError(f"cannot write {path}: {why} ({exc.strerror}); write the output elsewhere, then rerun",
                          path, False)
    if is_os and code in (errno.EACCES, errno.EPERM) and exc.filename is not None and \
            _inside(Path(exc.filename), path):
        return WriteError(f"cannot write {exc.filename}: permission denied; make {path.parent} writable "
                          "or write the output elsewhere", path, False)
    return None


def _inside(child: Path, parent: Path) -> bool:
    try:
        Path(child).absolute().relative_to(Path(parent).absolute().parent)
        return True
    except ValueError:
        return False


@contextlib.contextmanager
def writing(path: Union[str, Path]) -> Iterator[None]:
    """Turn a write failure inside the block into a :class:`WriteError` naming ``path``; any
    other error passes unchanged. The caller removes its partial files afterwards."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only write failures are turned, the rest re-raised
        failure = write_failure(exc, path)
        if failure is None:
            raise
        raise failure from None


def write_atomic(path: Union[str, Path], data: Union[str, bytes]) -> None:
    """Write ``data`` (text or bytes) to ``path``, creating its folder; on failure nothing
    is left under either name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                tmp.write_text(data)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Union[str, Path], data: Any) -> None:
    """``data`` as indented JSON (keys in their order), written with :func:`write_atomic`."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")
