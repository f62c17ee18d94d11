"""The structure holds: the engine never imports Prefect, nothing imports in a circle, no module grows past
what a person reads in a few minutes, and the README's map of the code matches the tree (in the spirit of
sqlite-utils' docs test)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).parents[1]
CODE = ("flows", "tasks")
ENGINE = PROJECT / "tasks" / "engine"
MAX_LINES = 400
PREFECT_PACKAGES = ("prefect", "prefect_aws", "prefect_slack")


def modules() -> dict[str, Path]:
    """Every module of flows/ and tasks/, by its dotted name."""
    found = {}
    for top in CODE:
        for path in sorted((PROJECT / top).rglob("*.py")):
            parts = path.relative_to(PROJECT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, at its top or inside a function (both make a circle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known}
    return found


def test_importing_every_engine_module_leaves_prefect_out() -> None:
    engine = [name for name in modules() if name.startswith("tasks.engine")]
    code = (f"import sys\nfor name in {engine!r}:\n    __import__(name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {PREFECT_PACKAGES!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"the engine imported Prefect: {done.stdout.strip()[:500]}"


def test_no_engine_module_names_prefect_even_inside_a_function() -> None:
    offenders = [str(path.relative_to(PROJECT)) for path in ENGINE.rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+(prefect|prefect_aws|prefect_slack)\b",
                              path.read_text(encoding="utf-8"), re.M)]
    assert offenders == []


def test_the_import_graph_of_flows_and_tasks_has_no_cycles() -> None:
    known = modules()
    graph = {name: imports_of(path, set(known)) - {name} for name, path in known.items()}
    # a package's __init__ is not a real dependency of its modules: only its own imports count
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_longer_than_a_person_reads_in_minutes(name: str) -> None:
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by concern"


def readme_map() -> dict[str, str]:
    """The README's "where things live" lines: `path` — what it holds."""
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\s*((?:flows|tasks)/[\w/]+\.py)\s+(.+)$", section, re.M))


def test_the_readme_map_names_every_module_and_only_modules_that_exist() -> None:
    mapped = set(readme_map())
    present = {str(path.relative_to(PROJECT)) for path in modules().values() if path.name != "__init__.py"}
    assert sorted(present - mapped) == [], "modules missing from README's map"
    assert sorted(mapped - present) == [], "README's map names files that do not exist"
