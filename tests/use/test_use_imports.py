"""limitr/use sits on top: nothing else in the library imports it, and it reaches the study
preparation of limitr/train only through its one adapter module (limitr/use/prepare.py)."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "limitr"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nothing_in_the_library_imports_use() -> None:
    for path in LIBRARY.rglob("*.py"):
        if path.is_relative_to(LIBRARY / "use"):
            continue
        assert not any(m == "limitr.use" or m.startswith("limitr.use.") for m in imported_modules(path)), path


def test_use_reaches_train_only_through_its_adapter() -> None:
    for path in (LIBRARY / "use").rglob("*.py"):
        train = {m for m in imported_modules(path) if m == "limitr.train" or m.startswith("limitr.train.")}
        if path.name == "prepare.py":
            assert train, "the adapter is where the preparation functions come from"
        else:
            assert not train, path
