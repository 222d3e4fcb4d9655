"""The layout's rules, checked on the source (no import of the product): no import cycle among the modules of
flows/ and tasks/ (imports inside functions count: a cycle "dodged" by a late import is still a cycle), the floors
(tasks/ never imports flows/; neither imports deployments/, benchmarks/, scripts/ or tests/), no module over 600
lines, and every module opens with a docstring that says what it is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "tasks")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _not_on_import(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (never runs) and ``if __name__ == "__main__":`` (runs only as a program, after every
    import is done): neither can take part in an import cycle."""
    return isinstance(node, ast.If) and ("TYPE_CHECKING" in (test := ast.unparse(node.test)) or "__main__" in test)


def imports_of(path: Path) -> set[str]:
    """The project modules a module imports, anywhere in it (in functions too), except where it never runs on
    import (see ``_not_on_import``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _not_on_import(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for a in child.names:  # from flows.evidence.ui import ui: the module ui, else the package
                    sub = f"{child.module}.{a.name}"
                    found.add(sub if sub in MODULES else child.module)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in MODULES}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    found = cycles(GRAPH)
    assert not found, "import cycles (a module of each imports the next): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_floors_hold() -> None:
    """tasks/ (the step kinds and their kit) never imports flows/; no product module imports the dev floors."""
    up = {m: sorted(d for d in deps if d.startswith("flows")) for m, deps in GRAPH.items() if m.startswith("tasks")}
    assert not {m: d for m, d in up.items() if d}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        named = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        named |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not named & {"deployments", "benchmarks", "scripts", "tests"}, name


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"


def test_every_module_says_what_it_is() -> None:
    silent = [name for name, path in MODULES.items() if not ast.get_docstring(ast.parse(path.read_text("utf-8")))]
    assert not silent, silent


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_no_module_is_hidden_from_git() -> None:
    """A module .gitignore hides is missing from every clone (flows/evidence/ once matched `evidence/`)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return
    files = [str(p.relative_to(ROOT)) for p in MODULES.values()]
    out = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == [], f"ignored by .gitignore: {out.stdout.split()}"


def test_every_module_imports() -> None:
    """The fast tier touches every product module: each imports on its own (no module only an e2e test loads)."""
    import importlib

    failed = {}
    for name in sorted(MODULES):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a module that does not import is a finding, whatever the error
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert not failed, failed
