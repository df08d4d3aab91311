"""The largest batch that fits: doubling, then bisection, each probe its own worker.

A probe is the case at one batch size, run through ``run_isolated`` with a short budget
and ``probe`` set (the worker times the step and skips the task metrics):
``ok`` fits; ``oom`` (a CUDA/host allocation failure caught in the worker, or the
watchdog's memory limit) does not. Any other status (error, crash, timeout) ends the
search with its reason rather than being mistaken for a memory limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.results.schema import STATUS_OK, STATUS_OOM, CaseResult
from bench.runners.isolation import run_isolated
from bench.spec.model import Budget, CaseSpec

PROBE_BUDGET = {"min_trials": 3, "max_trials": 5, "max_time_s": 1.0, "trial_time_s": 0.05,
                "warmup_max_s": 0.5, "processes": 1}


@dataclass
class Probe:
    batch_size: int
    status: str
    reason: str | None = None
    throughput: float | None = None
    throughput_unit: str | None = None
    peak_mib: float | None = None


@dataclass
class MaxBatch:
    case_id: str
    max_batch: int | None  # None: even the first probe did not fit
    first_oom: int | None  # smallest batch seen not to fit
    probes: list[Probe] = field(default_factory=list)
    stopped: str | None = None  # why the search ended early (a non-memory failure)

    @property
    def at_max(self) -> Probe | None:
        return next((p for p in self.probes if p.batch_size == self.max_batch), None)


# The largest batch the search probes unless told otherwise (bench max-batch --ceiling).
DEFAULT_CEILING = 1 << 16


def search(probe: Callable[[int], Probe], start: int = 1,
           ceiling: int = DEFAULT_CEILING) -> MaxBatch:
    """Double from ``start`` until a probe does not fit (or ``ceiling``), then bisect
    between the last fit and the first failure."""
    result = MaxBatch(case_id="", max_batch=None, first_oom=None)
    low, high = 0, None  # low fits (0: nothing yet), high does not
    size = start
    while size <= ceiling:
        outcome = probe(size)
        result.probes.append(outcome)
        if outcome.status == STATUS_OK:
            low = size
            size *= 2
        elif outcome.status == STATUS_OOM:
            high = size
            break
        else:
            result.stopped = f"batch {size}: {outcome.status}: {outcome.reason}"
            break
    if high is not None and not result.stopped:
        while high - low > 1:
            mid = (low + high) // 2
            outcome = probe(mid)
            result.probes.append(outcome)
            if outcome.status == STATUS_OK:
                low = mid
            elif outcome.status == STATUS_OOM:
                high = mid
            else:
                result.stopped = f"batch {mid}: {outcome.status}: {outcome.reason}"
                break
    result.max_batch = low or None
    result.first_oom = high
    return result


def _probe_result(batch: int, record: CaseResult) -> Probe:
    throughput = record.throughput
    peak = None
    if record.memory is not None:
        peak = record.memory.peak()[0]
    elif "watchdog_peak_rss_mib" in record.details:
        peak = record.details["watchdog_peak_rss_mib"]
    return Probe(batch, record.status, record.reason,
                 throughput.value if throughput else None,
                 throughput.unit if throughput else None, peak)


def max_batch_for_case(case: CaseSpec, ceiling: int = DEFAULT_CEILING,
                       run: Callable[[CaseSpec], CaseResult] = run_isolated) -> MaxBatch:
    """Search the batch_size axis of ``case`` (its other axes fixed)."""
    budget = Budget(**{**case.budget.to_dict(), **PROBE_BUDGET})

    def probe(batch: int) -> Probe:
        trial = dataclasses.replace(case, axes={**case.axes, "batch_size": batch},
                                    budget=budget, probe=True)
        return _probe_result(batch, run(trial))

    result = search(probe, start=int(case.axes.get("batch_size", 1)), ceiling=ceiling)
    result.case_id = case.case_id
    return result
