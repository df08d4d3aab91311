"""Expand a suite's matrices into cases; say why a case cannot run here."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bench.errors import BenchInputError
from bench.spec.model import BenchmarkSpec, CaseSpec, SuiteSpec


def parse_select(items: list[str] | None, option: str = "--select") -> dict[str, set[str]]:
    """``["device=cpu", "batch_size=8,16"]`` -> ``{"device": {"cpu"}, ...}`` (CLI, plugin)."""
    select: dict[str, set[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise BenchInputError(option, f"expected AXIS=VALUE[,VALUE...], got {item!r}")
        select.setdefault(key, set()).update(values.split(","))
    return select


@dataclass(frozen=True)
class PlannedCase:
    spec: CaseSpec
    skip_reason: str | None = None

    @property
    def case_id(self) -> str:
        return self.spec.case_id


def skip_reason(case: CaseSpec) -> str | None:
    """Why this case cannot run on this machine, or None if it can."""
    from bench.variants.devices import device_unavailable_reason
    from bench.variants.precision import get_precision
    from bench.workloads import get_workload

    reason = device_unavailable_reason(case.device)
    if reason:
        return reason
    precision = get_precision(case.axes.get("precision", "fp32"))
    workload = get_workload(case.workload)
    if precision.float8_training and not workload.float8_training:
        return f"workload {case.workload} does not build float8 training (gpt does)"
    reason = precision.unsupported_reason(case.device, case.phase)
    if reason:
        return reason
    return workload.unsupported_reason(case)


def benchmark_cases(bench: BenchmarkSpec) -> list[CaseSpec]:
    names = list(bench.matrix)
    return [
        CaseSpec(workload=bench.workload, phase=bench.phase,
                 axes=dict(zip(names, values, strict=True)), params=bench.params,
                 budget=bench.budget, accuracy=bench.accuracy, id_axes=bench.named_axes,
                 label=bench.label, parity_target=bench.parity_target)
        for values in itertools.product(*(bench.matrix[n] for n in names))
    ]


def benchmark_case_ids(bench: BenchmarkSpec) -> list[str]:
    return [case.case_id for case in benchmark_cases(bench)]


def expand_suite(suite: SuiteSpec, select: dict[str, set[str]] | None = None) -> list[PlannedCase]:
    """Every combination of every benchmark's matrix, in file order.

    ``select`` keeps only cases whose axis values (as strings) are in the given sets;
    cases that cannot run are kept, with their reason, never dropped.
    """
    planned: list[PlannedCase] = []
    for bench in suite.benchmarks:
        for case in benchmark_cases(bench):
            if select and any(str(case.axes.get(k)) not in allowed
                              for k, allowed in select.items() if k in case.axes):
                continue
            planned.append(PlannedCase(case, skip_reason(case)))
    return planned
