"""Service levels a suite asks of its cases (``slo = { ... }`` per benchmark), checked on
one run: absolute bounds on latency, throughput and memory, and relations to the case's
parity reference (``min_speedup``: paired speed-up when the run measured one, else the
ratio of the two cases' medians, said as such; ``min_parity``: the accuracy parity ratio).

A bound the run cannot check (a figure missing, no reference measured) is a failure with
its reason, never a pass; a case this machine cannot run (skipped, with its reason: no GPU,
a combination the variant does not build) is neither.
"""

from __future__ import annotations

import math

from bench.reports.parity import parity_by_case
from bench.results.schema import STATUS_SKIPPED, CaseResult
from bench.spec.model import is_reference, shape_key

_LATENCY = {"median_ms": None, "p50_ms": "p50", "p90_ms": "p90", "p99_ms": "p99"}
# A generation case's bounds: key -> (its figure in CaseResult.generation, percentile).
_GENERATION = {"ttft_p50_ms": ("ttft", "p50"), "ttft_p99_ms": ("ttft", "p99"),
               "tpot_p50_ms": ("tpot", "p50"), "tpot_p99_ms": ("tpot", "p99"),
               "itl_p99_ms": ("itl", "p99")}


def _generation_ms(case: CaseResult, key: str) -> float | None:
    """A generation figure in ms for an SLO key (None: not a generation case, or the
    figure is undefined, e.g. TPOT for one output token)."""
    return None if case.generation is None else \
        case.generation.percentile_ms(*_GENERATION[key])


def _at_most(name: str, value: float | None, bound: float, unit: str) -> str | None:
    if value is None or not math.isfinite(value):
        return f"{name}: not measured"
    return None if value <= bound else f"{name} {value:.4g} {unit} > {bound:g}"


def _at_least(name: str, value: float | None, bound: float, unit: str) -> str | None:
    if value is None or not math.isfinite(value):
        return f"{name}: not measured"
    return None if value >= bound else f"{name} {value:.4g}{unit} < {bound:g}"


def _speedup(case: CaseResult, cases: list[CaseResult]) -> tuple[float | None, str]:
    if case.vs_reference is not None:
        return case.vs_reference.speedup, "x (paired)"
    key = shape_key(case)
    reference = next((c for c in cases if c.measured and is_reference(c)
                      and shape_key(c) == key), None)
    if reference is None or reference.timing is None or case.timing is None:
        return None, ""
    return reference.timing.median_s / case.timing.median_s, "x (ratio of medians, unpaired)"


def slo_failures(cases: list[CaseResult]) -> dict[str, list[str]]:
    """Each case with an SLO -> the bounds it misses (empty: it meets them all). A case that
    did not run misses them all."""
    parities = parity_by_case(cases)
    out: dict[str, list[str]] = {}
    for case in cases:
        # A case this machine cannot run (skipped, with its reason) is not a miss here.
        if not case.slo or case.status == STATUS_SKIPPED:
            continue
        if not case.measured:
            out[case.case_id] = [f"not measured ({case.status})"]
            continue
        failures = []
        for key, bound in case.slo.items():
            if key in _LATENCY:
                t = case.timing
                seconds = None if t is None else (
                    t.median_s if _LATENCY[key] is None else t.latency_s.get(_LATENCY[key]))
                failures.append(_at_most(key, None if seconds is None else seconds * 1e3,
                                         bound, "ms"))
            elif key in _GENERATION:
                failures.append(_at_most(key, _generation_ms(case, key), bound, "ms"))
            elif key == "min_throughput":
                thr = case.throughput
                failures.append(_at_least("throughput", thr.value if thr else None, bound,
                                          f" {thr.unit}" if thr else ""))
            elif key == "max_peak_mib":
                peak = case.memory.peak()[0] if case.memory else None
                failures.append(_at_most("peak memory", peak, bound, "MiB"))
            elif key == "min_speedup" and not is_reference(case):
                value, how = _speedup(case, cases)
                failures.append(_at_least("speed-up over the reference", value, bound, how))
            elif key == "min_parity" and not is_reference(case):
                parity = parities.get(case.case_id)
                failures.append(_at_least("parity", parity.ratio if parity else None, bound,
                                          ""))
        out[case.case_id] = [f for f in failures if f]
    return out
