"""dvc.yaml's code deps cover what each stage runs: the modules stages/<stage>.py imports,
directly or not (every import statement, also those inside functions and TYPE_CHECKING
blocks; each package's __init__.py with its modules). A module that is missing from a
stage's deps would let a metric come from old code, so this test fails on it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINES = (REPO / "dvc.yaml", REPO / "stages" / "synthetic" / "dvc.yaml")
OWN_PACKAGES = ("limitr", "stages")


def module_file(name: str, repo: Path = REPO) -> Path | None:
    """The file of module ``name`` in the repository (a package's __init__.py), or None."""
    base = repo.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
    return {n for n in names if n.split(".")[0] in OWN_PACKAGES}


def code_closure(entry: str, repo: Path = REPO) -> set[str]:
    """Repository-relative files of module ``entry`` and everything it imports, transitively."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            path = module_file(".".join(parts[:i]), repo)
            if path is not None and path not in files:
                files.add(path)
                todo.extend(_imported_names(path))
    return {p.relative_to(repo).as_posix() for p in files}


def stage_commands(stage: dict) -> list[str]:
    cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
    return [c.split()[1] for c in cmds if c.split()[0] == "limitr"]


def uncovered(needed: set[str], deps: list[str]) -> list[str]:
    """The files of ``needed`` that no dep names (a file itself or a folder above it)."""
    deps = [d.rstrip("/") for d in deps]
    return sorted(f for f in needed if not any(f == d or f.startswith(d + "/") for d in deps))


def _stages() -> list[tuple[str, str, dict]]:
    out = []
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load(pipeline.read_text())["stages"].items():
            # a foreach stage's body is under do:
            out.append((pipeline.relative_to(REPO).as_posix(), name, stage.get("do", stage)))
    return out


@pytest.mark.parametrize("pipeline,name,stage", _stages(), ids=lambda v: v if isinstance(v, str) else "")
def test_stage_deps_cover_its_code(pipeline: str, name: str, stage: dict) -> None:
    commands = stage_commands(stage)
    assert commands, f"{pipeline}:{name} runs no limitr command"
    needed: set[str] = set()
    for command in commands:
        assert module_file(f"stages.{command}") is not None, command
        needed |= code_closure(f"stages.{command}")
    missing = uncovered(needed, [str(d) for d in stage.get("deps", [])])
    assert not missing, f"{pipeline}: stage {name} lacks these code deps: {', '.join(missing)}"


def test_every_stage_command_has_a_stage() -> None:
    from stages.app import STAGE_MODULES

    run = {c for _, _, stage in _stages() for c in stage_commands(stage)}
    assert set(STAGE_MODULES) <= run


def test_the_check_fails_on_a_missing_dep(tmp_path: Path) -> None:
    """The checker itself: a module imported two levels down, left out, is found."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "limitr" / "data").mkdir(parents=True)
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "limitr" / "__init__.py").write_text("")
    (tmp_path / "limitr" / "data" / "__init__.py").write_text("")
    (tmp_path / "stages" / "tokenize.py").write_text("def run():\n    from limitr.data import shards\n")
    (tmp_path / "limitr" / "data" / "shards.py").write_text("import limitr.data.schema as s\nimport os\n")
    (tmp_path / "limitr" / "data" / "schema.py").write_text("X = 1\n")
    needed = code_closure("stages.tokenize", tmp_path)
    assert needed == {"stages/__init__.py", "stages/tokenize.py", "limitr/__init__.py",
                      "limitr/data/__init__.py", "limitr/data/shards.py", "limitr/data/schema.py"}
    deps = ["stages/__init__.py", "stages/tokenize.py", "limitr/__init__.py", "limitr/data/__init__.py",
            "limitr/data/shards.py"]
    assert uncovered(needed, deps) == ["limitr/data/schema.py"]
    assert uncovered(needed, [*deps[:4], "limitr/data"]) == []
