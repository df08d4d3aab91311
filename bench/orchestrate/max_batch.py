"""The largest batch that fits: doubling, then bisection, each probe its own worker.

A probe is the case at one batch size, one worker started by a launcher
(bench.launch.launcher; spawned, not forked: a probe's peak memory is the figure, and a
forked worker's would count pages it shares with its server) with a short budget and
``probe`` set (the worker times the step and skips the task metrics):
``ok`` fits; ``oom`` (a CUDA/host allocation failure caught in the worker, or the
watchdog's memory limit) does not. With a latency bound (``bench max-batch --latency
p99_ms=20``) a probe whose step latency percentile (closed loop: one batch per step)
exceeds the bound does not fit either (``over_latency``); for a text-generation case
the bound may be on its time per output token or to first token instead (``--latency
tpot_p50_ms=60``: the percentile over the probe's generate calls), and a suite whose matrix
lists several ``input_tokens`` searches the batch at each context. A probe timed while other
processes took the CPU (``contended``) still says whether the batch fits in memory, which
load does not change, and a latency within the bound, which load only lengthens: it counts
as ``ok``. Only a contended probe over a latency bound cannot tell; it is run again (up to
``CONTENDED_PROBE_RETRIES`` times), then ends the search with its reason. Any other status
(error, crash, timeout) ends the search with its reason rather than being mistaken for a
limit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.errors import BenchInputError
from bench.launch.launcher import Launcher, local_launcher
from bench.results.schema import STATUS_CONTENDED, STATUS_OK, STATUS_OOM, CaseResult
from bench.spec.model import Budget, CaseSpec
from bench.units import MIB

PROBE_BUDGET = {"min_trials": 3, "max_trials": 5, "max_time_s": 1.0, "trial_time_s": 0.05,
                "warmup_max_s": 0.5, "processes": 1}
# A latency percentile needs more steps than a fit: about 100 in a second or two.
LATENCY_PROBE_BUDGET = {**PROBE_BUDGET, "min_trials": 5, "max_trials": 10,
                        "max_time_s": 2.0, "trial_time_s": 0.2}
# A probe that ran but whose latency percentile is above the bound (not a CaseResult status).
OVER_LATENCY = "over_latency"
LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms")
# Text generation's figures (CaseResult.generation): TPOT or TTFT percentiles over calls.
GENERATION_LATENCY_KEYS = tuple(f"{figure}_{key}" for figure in ("tpot", "ttft")
                                for key in LATENCY_KEYS)
# Runs of a contended probe over the latency bound before the search stops undecided.
CONTENDED_PROBE_RETRIES = 2


@dataclass(frozen=True)
class LatencyBound:
    """``p99_ms=20``: the step latency percentile a batch must stay within;
    ``tpot_p50_ms=60`` (``ttft_...``): a generation case's TPOT (TTFT) percentile."""

    percentile: str  # p50 | p90 | p99 (the worker's TimingResult.latency_s keys)
    ms: float
    figure: str = "step"  # step | tpot | ttft

    def __str__(self) -> str:
        prefix = "" if self.figure == "step" else f"{self.figure}_"
        return f"{prefix}{self.percentile}_ms={self.ms:g}"

    @property
    def label(self) -> str:
        return self.percentile if self.figure == "step" else \
            f"{self.figure.upper()} {self.percentile}"

    def read_ms(self, record: CaseResult) -> float | None:
        """The bound's figure in the record, in ms (None: not recorded)."""
        if self.figure != "step":
            generation = record.generation
            return None if generation is None else \
                generation.percentile_ms(self.figure, self.percentile)
        value = (record.timing.latency_s if record.timing else {}).get(self.percentile)
        return None if value is None else value * 1000


def parse_latency_bound(text: str, option: str = "--latency") -> LatencyBound:
    key, sep, value = text.partition("=")
    valid_keys = LATENCY_KEYS + GENERATION_LATENCY_KEYS
    if not sep or key not in valid_keys:
        raise BenchInputError(option, f"expected PERCENTILE_ms=MS, got {text!r}", key=option,
                              valid=", ".join(f"{k}=<ms>" for k in valid_keys))
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or ms <= 0:
        raise BenchInputError(option, f"{value!r} is not a positive number of ms", key=key,
                              valid="a finite number > 0")
    figure, _, percentile = key.removesuffix("_ms").rpartition("_")
    return LatencyBound(percentile, ms, figure or "step")


@dataclass
class Probe:
    batch_size: int
    status: str
    reason: str | None = None
    throughput: float | None = None
    throughput_unit: str | None = None
    peak_mib: float | None = None
    latency_ms: float | None = None  # the bound's percentile, where a bound was given
    kv_cache_mib: float | None = None  # a generation case's KV cache (computed)


@dataclass
class MaxBatch:
    case_id: str
    max_batch: int | None  # None: even the first probe did not fit
    first_oom: int | None  # smallest batch seen not to fit in memory
    probes: list[Probe] = field(default_factory=list)
    stopped: str | None = None  # why the search ended early (a non-memory failure)
    latency_bound: str | None = None  # e.g. "p99_ms=20"
    first_over_latency: int | None = None  # smallest batch seen over the latency bound

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
        elif outcome.status in (STATUS_OOM, OVER_LATENCY):
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
            elif outcome.status in (STATUS_OOM, OVER_LATENCY):
                high = mid
            else:
                result.stopped = f"batch {mid}: {outcome.status}: {outcome.reason}"
                break
    result.max_batch = low or None
    result.first_oom = min((p.batch_size for p in result.probes if p.status == STATUS_OOM),
                           default=None)
    result.first_over_latency = min((p.batch_size for p in result.probes
                                     if p.status == OVER_LATENCY), default=None)
    return result


def _probe_result(batch: int, record: CaseResult, bound: LatencyBound | None) -> Probe:
    throughput = record.throughput
    peak = None
    if record.memory is not None:
        peak = record.memory.peak()[0]
    elif "watchdog_peak_rss_mib" in record.details:
        peak = record.details["watchdog_peak_rss_mib"]
    # Contention slows a probe; it changes neither its memory nor a latency that is in bound.
    status = STATUS_OK if record.status == STATUS_CONTENDED else record.status
    probe = Probe(batch, status, record.reason if status != STATUS_OK else None,
                  throughput.value if throughput else None,
                  throughput.unit if throughput else None, peak)
    if record.generation is not None:
        probe.kv_cache_mib = record.generation.kv_cache_computed_bytes / MIB
    if bound is not None and status == STATUS_OK:
        latency = bound.read_ms(record)
        if latency is None or not math.isfinite(latency):
            probe.status, probe.reason = "error", f"no {bound.label} latency recorded"
        else:
            probe.latency_ms = latency
            if probe.latency_ms > bound.ms:
                over = f"{bound.label} {probe.latency_ms:.3g} ms > {bound.ms:g} ms"
                if record.status == STATUS_CONTENDED:
                    probe.status = STATUS_CONTENDED
                    probe.reason = f"{over}, but timed under contention ({record.reason})"
                else:
                    probe.status, probe.reason = OVER_LATENCY, over
    return probe


def max_batch_for_case(case: CaseSpec, ceiling: int = DEFAULT_CEILING,
                       launcher: Launcher | None = None,
                       latency: LatencyBound | None = None) -> MaxBatch:
    """Search the batch_size axis of ``case`` (its other axes fixed): the largest batch that
    fits in memory and, with ``latency``, whose step latency percentile meets the bound."""
    # A step percentile needs many steps; a generation bound is a percentile over calls,
    # each call's TPOT already the mean of its steps: the fit probe's calls do.
    settings = LATENCY_PROBE_BUDGET if latency is not None and latency.figure == "step" \
        else PROBE_BUDGET
    budget = Budget(**{**case.budget.to_dict(), **settings})

    def probe(batch: int) -> Probe:
        trial = dataclasses.replace(case, axes={**case.axes, "batch_size": batch},
                                    budget=budget, probe=True)
        for _ in range(CONTENDED_PROBE_RETRIES + 1):
            outcome = _probe_result(batch, launcher.run_once(trial), latency)
            if outcome.status != STATUS_CONTENDED:
                break
        return outcome

    with local_launcher(launcher, fork=False) as launcher:
        result = search(probe, start=case.batch_size or 1, ceiling=ceiling)
    result.case_id = case.case_id
    result.latency_bound = None if latency is None else str(latency)
    return result
