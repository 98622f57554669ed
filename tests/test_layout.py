"""The package's layering: no import cycle among first-party modules, anywhere.

``lint-imports`` (CI's lint step, contracts in pyproject.toml) checks the ``slimtune/``
tree, but the card's top-level folders (``search/``, ``agents/``, ``envs/``,
``spaces/``, installed as ``slimtune.search`` ...) sit outside it where its graph builder
does not look; this test reads every first-party file's imports, those inside functions
included, and looks for a cycle over all of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: where each first-party package's files live (pyproject's package-dir)
FOLDERS = {"slimtune": ROOT / "slimtune", "slimtune.search": ROOT / "search",
           "slimtune.agents": ROOT / "agents", "slimtune.envs": ROOT / "envs",
           "slimtune.spaces": ROOT / "spaces"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """First-party modules ``path`` imports (a ``from m import x`` names m.x if a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                     else node.module for a in node.names]
        out.update(n for n in names if n in known)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_first_party_modules():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(path, known) - {name} for name, path in modules.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    graph = {n: {m for m in deps if not (n == m.rpartition(".")[0])} for n, deps in graph.items()}
    assert len(modules) > 100 and any(n.startswith("slimtune.envs.") for n in modules)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_first_party_package_is_installed():
    """pyproject lists its packages by hand (the card's folders are mapped into
    ``slimtune``): a sub-package missing there is absent from a wheel or a Docker image."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert packages <= listed, sorted(packages - listed)
