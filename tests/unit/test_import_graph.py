"""The structure holds: no import cycle among the modules of ``runner/`` and ``trainer/``, and the
runner reaches into the trainer only through the torch-free modules the contract allows.

The graph is built from the source with ``ast``: every import counts, at module level or inside a
function (a lazy import is still a dependency), and importing ``a.b.c`` also depends on the packages
``a.b`` and ``a`` whose ``__init__`` Python runs first."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runner", "trainer")
#: What the runner may import of the trainer: the contract, the torch-free schema of ``train:`` and
#: the job-file loader (and its job variables) it validates with, the storage client it reads runs
#: through, and the (torch-free) dataset lister it checks a job's data with before launching.
RUNNER_MAY_IMPORT = {"trainer", "trainer.contract", "trainer.config", "trainer.dataset_cache", "trainer.jobfile",
                     "trainer.jobvars", "trainer.storage", "trainer.storage_api"}


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _ours(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                mod = _ours(target, known)
                while mod:  # the module and every package above it
                    if mod != name and not name.startswith(mod + "."):
                        graph[name].add(mod)
                    mod = mod.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_runner_or_trainer():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runner_imports_of_the_trainer_only_what_the_contract_allows():
    graph = import_graph()
    reaching = {f"{m} -> {t}" for m, targets in graph.items() if m.startswith("runner")
                for t in targets if t.startswith("trainer") and t not in RUNNER_MAY_IMPORT}
    assert reaching == set()


def test_the_runpod_client_knows_nothing_of_the_backends():
    graph = import_graph()
    assert {f"{m} -> {t}" for m, targets in graph.items() if m.startswith("runner.runpod")
            for t in targets if t.startswith("runner.backends")} == set()


def test_sql_lives_in_the_state_module_only():
    """Every query goes through :class:`runner.state.State` methods: one place knows the schema."""
    outside = [str(path.relative_to(ROOT)) for path in modules().values()
               if ".execute(" in path.read_text() and path != ROOT / "runner" / "state.py"]
    assert outside == []
