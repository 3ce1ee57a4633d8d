"""Files written whole or not at all: the data to a temporary name beside the target, then a
rename over it, so that a reader (or a killed run's next start) never sees half a file."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Union


def write_atomic(path: Union[str, Path], data: Union[str, bytes]) -> None:
    """Write ``data`` (text or bytes) to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def write_json(path: Union[str, Path], data: Any) -> None:
    """``data`` as indented JSON (keys in their order), written with :func:`write_atomic`."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")
