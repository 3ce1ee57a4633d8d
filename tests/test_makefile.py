"""`make run`, the README's first command, on a fresh machine: the stages it starts find the
`limitr` command of the project's venv without the venv being activated."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_puts_the_venv_first_on_path(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    found = tmp_path / "found.txt"
    _script(bin_dir / "python", "exit 0")
    _script(bin_dir / "limitr", "exit 0")
    _script(bin_dir / "dvc", f'command -v limitr > "{found}"')  # stands in for `dvc repro`
    stamp = tmp_path / "venv" / ".installed"
    stamp.touch()
    later = time.time() + 5
    os.utime(stamp, (later, later))  # installed after pyproject.toml: make installs nothing
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["make", "run", "VENV=venv"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(found.read_text().strip()) == bin_dir / "limitr"
