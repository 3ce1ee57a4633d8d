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


def test_use_never_imports_train_and_prepares_through_its_adapter() -> None:
    for path in (LIBRARY / "use").rglob("*.py"):
        imported = imported_modules(path)
        assert not {m for m in imported if m == "limitr.train" or m.startswith("limitr.train.")}, path
        if path.name == "prepare.py":
            assert "limitr.data.prepare" in imported, "the adapter takes the study preparation from limitr/data"
