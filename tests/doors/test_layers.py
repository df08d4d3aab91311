"""Layers that only look down: no module imports from a layer above it, the
commands that only read results never import torch, and every import kept inside a
function says why in one line."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

# What each package may not import at module level: the layers above it.
_STARTERS = ("bench.orchestrate", "bench.launch", "bench.runners")
ABOVE = {
    "spec": (*_STARTERS, "bench.modes", "bench.reports", "bench.variants",
             "bench.workloads", "bench.results", "bench.measurement", "bench.cli",
             "bench.pytest_plugin"),
    "results": (*_STARTERS, "bench.modes", "bench.reports", "bench.variants",
                "bench.workloads", "bench.measurement", "bench.cli", "bench.pytest_plugin"),
    "measurement": (*_STARTERS, "bench.modes", "bench.reports", "bench.variants",
                    "bench.workloads", "bench.cli", "bench.pytest_plugin"),
    "reports": (*_STARTERS, "bench.modes", "bench.variants", "bench.workloads",
                "bench.cli", "bench.pytest_plugin"),
    "variants": (*_STARTERS, "bench.modes", "bench.reports", "bench.workloads",
                 "bench.cli", "bench.pytest_plugin"),
    "workloads": (*_STARTERS, "bench.modes", "bench.reports", "bench.cli",
                  "bench.pytest_plugin"),
    # How a case runs inside its worker (bench.modes): below what starts workers.
    "modes": (*_STARTERS, "bench.reports", "bench.cli", "bench.pytest_plugin"),
    # bench/runners/ by role: what runs inside a worker (runners), how workers are
    # started (launch), what runs many cases (orchestrate). A worker never starts another
    # case's worker, and a launcher never plans cases.
    "runners": ("bench.orchestrate", "bench.launch", "bench.reports", "bench.cli",
                "bench.pytest_plugin"),
    "launch": ("bench.orchestrate", "bench.runners", "bench.reports", "bench.cli",
               "bench.pytest_plugin"),
    "orchestrate": ("bench.runners", "bench.reports", "bench.cli", "bench.pytest_plugin"),
}


def _modules() -> list[Path]:
    return sorted(BENCH.rglob("*.py"))


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module]
    return []


def test_every_package_has_its_layer():
    packages = {p.parent.name for p in BENCH.glob("*/__init__.py")}
    assert packages == set(ABOVE)


def test_the_spec_layers_budget_minimum_is_the_statistics_own():
    from bench.measurement.stats import min_trials_for_verdict
    from bench.spec.model import MIN_TRIALS_FOR_VERDICT

    assert min_trials_for_verdict(0.05) == MIN_TRIALS_FOR_VERDICT


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_module_imports_a_layer_above_its_own(package):
    offences = []
    for path in (BENCH / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level; TYPE_CHECKING blocks are annotations only
            for name in _imported(node):
                if name.startswith(ABOVE[package]):
                    offences.append(f"{path.relative_to(BENCH.parent)}:{node.lineno} {name}")
    assert offences == []


def _function_imports(tree: ast.Module) -> list[tuple[ast.stmt, list[ast.stmt]]]:
    """Each import statement inside a function, with the statement list it sits in."""
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            for body in (getattr(node, f, None) for f in ("body", "orelse", "finalbody")):
                if isinstance(body, list):
                    found += [(s, body) for s in body if isinstance(s, ast.Import | ast.ImportFrom)]
    return found


def _has_reason(statement: ast.stmt, body: list[ast.stmt], lines: list[str]) -> bool:
    """A comment on one of its lines or on the line above; or it follows such an import."""
    own = lines[statement.lineno - 1:statement.end_lineno]
    if any("#" in line for line in own) or lines[statement.lineno - 2].strip().startswith("#"):
        return True
    index = body.index(statement)
    previous = body[index - 1] if index else None
    return isinstance(previous, ast.Import | ast.ImportFrom) and _has_reason(previous, body,
                                                                           lines)


def test_every_import_inside_a_function_says_why():
    missing = []
    for path in _modules():
        if path.name == "cli.py":  # its module docstring says why, once for all commands
            continue
        text = path.read_text()
        lines = text.splitlines()
        for statement, body in _function_imports(ast.parse(text)):
            if not _has_reason(statement, body, lines):
                missing.append(f"{path.relative_to(BENCH.parent)}:{statement.lineno}")
    assert missing == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(BENCH.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The bench modules a module imports when it runs: at module level and inside its
    functions, not in ``if TYPE_CHECKING:`` blocks (annotations only)."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = _imported(node)
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known}
    return found


def test_no_module_takes_part_in_an_import_cycle_at_run_time():
    """Module-level and function-local imports together form no cycle (a function-local
    import that breaks a cycle only hides it: ranks <-> worker, sweep <-> ray_executor
    were two)."""
    paths = {_module_name(p): p for p in _modules()}
    graph = {name: _runtime_imports(ast.parse(path.read_text()), set(paths)) - {name}
             for name, path in paths.items()}
    cycles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [name, target])
                              if target in trail else f"{name} -> {target}")
            elif target not in state:
                visit(target, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_reading_results_never_imports_torch():
    code = ("import sys, bench.cli, bench.pytest_plugin, bench.reports.gate, "
            "bench.reports.html, bench.reports.hardware, bench.reports.table, bench.reports.show, "
            "bench.results.store, bench.orchestrate.plan, bench.orchestrate.interleave; "
            "print(' '.join(m for m in ('torch', 'scipy', 'matplotlib', 'onnxruntime') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         cwd=BENCH.parent, env={"PYTHONPATH": str(BENCH.parent)}, check=True)
    assert out.stdout.strip() == ""


DOCS = ["README.md", "results/README.md",
        *sorted(str(p.relative_to(BENCH.parent)) for p in (BENCH.parent / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_name_only_files_that_exist(doc):
    root = BENCH.parent
    text = (root / doc).read_text()
    named = set(re.findall(r"(?<![~\w/.])((?:bench|tools|tests|suites|docs|examples)/"
                           r"[\w/.-]*\w)", text))
    # Markdown links are relative to the page.
    linked = {str(((root / doc).parent / target).relative_to(root)) if not target.startswith(
        "/") else target for target in re.findall(r"\]\(([^)#:]+)\)", text)}
    assert named | linked, doc
    missing = sorted(p for p in named | linked if not (root / p).exists()
                     and not p.startswith("results/runs/"))  # named before they are written
    assert missing == []


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_name_only_commands_that_exist(doc):
    from bench.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    targets = set(re.findall(r"^([\w-]+):", (BENCH.parent / "Makefile").read_text(), re.M))
    text = (BENCH.parent / doc).read_text()
    used = set(re.findall(r"(?:^|[`$] ?|\n)bench ([a-z][\w-]*)", text))
    made = set(re.findall(r"`make ([a-z][\w-]*)", text)) | set(
        re.findall(r"^make ([a-z][\w-]*)", text, re.M))
    assert sorted(used - commands) == [] and sorted(made - targets) == []


def test_the_front_door_stays_short():
    assert len((BENCH.parent / "README.md").read_text().splitlines()) <= 200
