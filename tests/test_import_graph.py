"""The import graph of limitr/ and stages/: no cycle between modules, and the evaluation
never imports the trainer (limitr.eval -> limitr.train).

Every import statement counts, also those inside functions (a deferred import is still a
dependency). ``from package import name`` is an edge to ``package.name`` when that is a
module, else to ``package``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("limitr", "stages")

#: (importer prefix, imported prefix) pairs that must never appear.
#: The evaluation never depends on the trainer; data reading depends on nothing above it.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("limitr.eval", "limitr.train"),
    *(("limitr.data", upper) for upper in ("limitr.text", "limitr.model", "limitr.train", "limitr.eval")),
)

#: Cycles that exist and are being removed (each a set of modules); any other cycle fails.
#: evaluate <-> grounding_task share read_manifest (issue 18, item 3). Empty this when gone.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports (directly, anywhere in its body)."""
    files = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a name in a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted(
        (a, b)
        for a, targets in graph.items()
        for b in targets
        for src, dst in FORBIDDEN
        if _within(a, src) and _within(b, dst)
    )


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert "limitr.data.studies" in graph and "stages.train" in graph  # the walk found the code
    new = [sorted(c) for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"


def test_eval_never_imports_train() -> None:
    graph = import_graph(ROOT)
    assert forbidden_edges(graph) == []
    assert any(_within(t, "limitr.data") for t in graph["limitr.eval.embed"])  # the shared preparation


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture()
def fake(tmp_path: Path) -> Path:
    """A tiny project: eval.a imports train.b lazily; x and y import each other (one
    relatively); data.c is imported by both and imports nothing."""
    _write(tmp_path, {
        "limitr/__init__.py": "",
        "limitr/data/__init__.py": "",
        "limitr/data/c.py": "import os\n",
        "limitr/eval/__init__.py": "",
        "limitr/eval/a.py": "from limitr.data import c\n\ndef f():\n    from limitr.train.b import g\n",
        "limitr/train/__init__.py": "",
        "limitr/train/b.py": "import limitr.data.c\n",
        "limitr/x.py": "from .y import h\n",
        "limitr/y.py": "def h():\n    import limitr.x\n",
        "stages/__init__.py": "",
        "stages/s.py": "from limitr.eval.a import f\n",
    })
    return tmp_path


def test_the_checks_fail_on_a_cycle_and_on_eval_to_train(fake: Path) -> None:
    graph = import_graph(fake)
    assert graph["limitr.eval.a"] == {"limitr.data.c", "limitr.train.b"}
    assert graph["limitr.x"] == {"limitr.y"} and graph["limitr.y"] == {"limitr.x"}
    assert graph["stages.s"] == {"limitr.eval.a"}
    assert cycles(graph) == [frozenset({"limitr.x", "limitr.y"})]
    assert forbidden_edges(graph) == [("limitr.eval.a", "limitr.train.b")]


def test_the_checks_pass_on_a_clean_fake(fake: Path) -> None:
    (fake / "limitr/y.py").write_text("def h():\n    return 1\n")
    (fake / "limitr/eval/a.py").write_text("from limitr.data import c\n")
    graph = import_graph(fake)
    assert cycles(graph) == [] and forbidden_edges(graph) == []
