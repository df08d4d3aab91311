"""Expand a suite's matrices into cases; say why a case cannot run here."""

from __future__ import annotations

import itertools
from typing import Any

from bench.errors import BenchInputError
from bench.spec.model import BenchmarkSpec, CaseSpec, SuiteSpec

# --select label=NAME keeps the cases of the benchmarks with that label ([[benchmark]] label).
LABEL = "label"


def parse_select(items: list[str] | None, option: str = "--select") -> dict[str, set[str]]:
    """``["device=cpu", "batch_size=8,16"]`` -> ``{"device": {"cpu"}, ...}`` (CLI, plugin)."""
    select: dict[str, set[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise BenchInputError(option, f"expected AXIS=VALUE[,VALUE...], got {item!r}")
        select.setdefault(key, set()).update(_as_in_case_ids(v) for v in values.split(","))
    return select


def _as_in_case_ids(value: str) -> str:
    """A value as case ids spell it: a boolean as TOML writes it (true) or Python (True)."""
    return {"true": "True", "false": "False"}.get(value.lower(), value)


def matrix_combinations(bench: BenchmarkSpec) -> list[tuple[Any, ...]]:
    """The benchmark's axis values per case, in the order of ``bench.matrix``: the product
    less its excluded combinations, then the included ones not already there."""
    names = list(bench.matrix)

    def matches(values: tuple[Any, ...], entry: dict[str, tuple[Any, ...]]) -> bool:
        return all(values[names.index(axis)] in wanted for axis, wanted in entry.items())

    kept = [values for values in itertools.product(*(bench.matrix[n] for n in names))
            if not any(matches(values, entry) for entry in bench.exclude)]
    seen = set(kept)
    for entry in bench.include:
        for values in itertools.product(*(entry.get(n, bench.matrix[n]) for n in names)):
            if values not in seen:
                seen.add(values)
                kept.append(values)
    return kept


def benchmark_cases(bench: BenchmarkSpec) -> list[CaseSpec]:
    names = list(bench.matrix)
    return [
        CaseSpec(workload=bench.workload, phase=bench.phase,
                 axes=dict(zip(names, values, strict=True)), params=bench.params,
                 budget=bench.budget, accuracy=bench.accuracy, id_axes=bench.named_axes,
                 label=bench.label, parity_target=bench.parity_target,
                 parity_reference=bench.parity_reference, slo=bench.slo,
                 training=bench.training, serving=bench.serving, mode=bench.mode)
        for values in matrix_combinations(bench)
    ]


def benchmark_case_ids(bench: BenchmarkSpec) -> list[str]:
    return [case.case_id for case in benchmark_cases(bench)]


def _check_select(suite: SuiteSpec, select: dict[str, set[str]]) -> None:
    """A typo in --select would silently keep every case (or none): refuse it in one line."""
    values: dict[str, set[str]] = {}
    for bench in suite.benchmarks:
        if bench.label:
            values.setdefault(LABEL, set()).add(bench.label)
        for entry in (bench.matrix, *bench.include):
            for axis, choices in entry.items():
                values.setdefault(axis, set()).update(str(v) for v in choices)
    for axis, wanted in select.items():
        if axis not in values:
            raise BenchInputError("--select", f"no benchmark of {suite.path} has an axis "
                                  f"{axis!r}", key=axis, valid=sorted(values))
        unknown = sorted(wanted - values[axis])
        if unknown:
            raise BenchInputError("--select", f"{axis} never takes {', '.join(unknown)} in "
                                  f"{suite.path}", key=axis, valid=sorted(values[axis]))


def _selected(case: CaseSpec, select: dict[str, set[str]]) -> bool:
    """The case's axis values (an axis the case lacks does not filter it) and its
    benchmark's label, when ``label`` is selected, are among the wanted ones."""
    for key, allowed in select.items():
        if key == LABEL and LABEL not in case.axes:
            if case.label not in allowed:
                return False
        elif key in case.axes and str(case.axes[key]) not in allowed:
            return False
    return True


def expand_suite(suite: SuiteSpec, select: dict[str, set[str]] | None = None) -> list[CaseSpec]:
    """Every combination of every benchmark's matrix, in file order.

    ``select`` keeps only cases whose axis values (as strings) are in the given sets.
    Whether this machine can run a case is the runners' question
    (bench.orchestrate.plan.plan_suite), not the spec's.
    """
    _check_select(suite, select or {})
    cases: list[CaseSpec] = []
    for bench in suite.benchmarks:
        for case in benchmark_cases(bench):
            if select and not _selected(case, select):
                continue
            cases.append(case)
    return cases
