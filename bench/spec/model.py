"""Typed specs: what a suite file says once it is validated."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.typed import from_dict, plain
from bench.units import DEFAULT_PARITY_TARGET


def benchmark_key(workload: str, phase: str, label: str | None) -> str:
    """The benchmark a case belongs to, ``workload/phase[:label]``: the one builder of the
    head of every case id, and the key reports group by (never parsed back from an id)."""
    return f"{workload}/{phase}" + (f":{label}" if label else "")


def shape_key(case: Any) -> tuple:
    """What a case shares with its parity reference: its benchmark and every axis that is
    not a variant axis (a CaseSpec or a CaseResult: both carry these)."""
    shape = tuple(sorted((k, str(v)) for k, v in case.axes.items()
                         if k not in case.parity_reference))
    return case.benchmark_key, shape


def is_reference(case: Any) -> bool:
    """Whether every variant axis of the case holds its reference value."""
    return all(case.axes.get(axis, value) == value
               for axis, value in case.parity_reference.items())


def measurement_key(case: Any) -> str:
    """What a case measures: workload, phase, axes, params, budget and a named mode. Two
    cases of one suite with the same key (the same configuration under two benchmark
    labels) are one measurement."""
    budget = case.budget if isinstance(case.budget, dict) else case.budget.to_dict()
    key = [case.workload, case.phase, case.axes, case.params, budget, training_settings(case)]
    serving = serving_settings(case)
    if serving is not None:  # absent before schema 8: keys of older files stay as they were
        key.append(serving)
    mode = getattr(case, "mode", None)
    if mode is not None:  # a named mode (schema 12): unnamed keys stay as they were
        key.append({"mode": mode})
    return json.dumps(key, sort_keys=True, default=str)


def serving_settings(case: Any) -> dict[str, Any] | None:
    """The LoadGen settings of a scenario case (a CaseSpec's ``serving``, a CaseResult's
    ``serving.settings``), None for a closed-loop case."""
    spec = getattr(case, "serving", None)
    if spec is None or case.scenario == CLOSED_LOOP:
        return None
    if isinstance(spec, ServingSpec):
        return spec.to_dict()
    return {k: spec.settings[k] for k in ServingSpec.__dataclass_fields__ if k in spec.settings}


def training_settings(case: Any) -> dict[str, Any] | None:
    """The time-to-accuracy settings of a CaseSpec (``training``) or of a CaseResult (its
    ``time_to_accuracy`` record), None for a case timed the usual way."""
    spec = getattr(case, "training", None)
    if spec is not None:
        return spec.to_dict()
    record = getattr(case, "time_to_accuracy", None)
    return None if record is None else dict(record.settings)


# The host allocator's states a budget may pin (bench.measurement.allocator applies them).
ALLOCATOR_POLICIES = ("steady", "system")
# The fewest trials per side with which Mann-Whitney can reach p < 0.05: 2 / C(8, 4) =
# 0.029, while 3 give at best 0.1 (bench.measurement.stats.min_trials_for_verdict, which
# a test keeps equal to this).
MIN_TRIALS_FOR_VERDICT = 4


@dataclass(frozen=True)
class Budget:
    """How much measuring a case may do, and when to stop early.

    Trials continue until the 95% CI half-width of the median falls under
    ``target_rel_ci`` (relative to the median) after ``min_trials``, or until
    ``max_trials`` or ``max_time_s`` is reached. With ``processes`` > 1 the case runs in
    that many independent worker processes and their trials are pooled, so the CI also
    covers what changes from one process to the next (allocation, thread placement).
    ``allocator`` pins the host allocator's state in the workers (see
    bench.measurement.allocator): ``steady`` (default) or ``system``. A case timed while
    other processes or the hypervisor took more than ``contended_above`` of the machine's
    CPU is ``contended`` (bench.measurement.interference); 1.0 never marks one (for a
    runner whose steal is constant, or a test of plumbing on a sleep).
    """

    min_trials: int = 5
    max_trials: int = 30
    target_rel_ci: float = 0.02
    max_time_s: float = 10.0
    trial_time_s: float = 0.1
    warmup_min_iters: int = 3
    warmup_max_s: float = 3.0
    warmup_tolerance: float = 0.05
    cv_warning: float = 0.10
    timeout_s: float = 300.0
    memory_limit_mib: float | None = None
    processes: int = 1
    allocator: str = "steady"
    contended_above: float = 0.10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AccuracyTarget:
    """A bound on one task metric: ``min`` and/or ``max``."""

    metric: str
    min: float | None = None
    max: float | None = None

    def check(self, value: float | None) -> bool | None:
        if value is None:
            return None
        if not math.isfinite(value):
            return False  # NaN compares false with every bound: it must never pass one
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value > self.max)


@dataclass(frozen=True)
class TrainingRunSpec:
    """An evaluated training run (time-to-accuracy mode, MLPerf Training's rules scaled
    down): train from initialization, evaluate every ``eval_every`` samples on the clock
    (0: once per epoch), stop at the target or at ``max_epochs`` / ``max_time_s``. Each
    case runs ``seeds`` runs, each in its own worker, with seeds ``first_seed``,
    ``first_seed + 1``, ...; the score is olympic (fastest and slowest dropped, mean of the
    rest). Without a target the run trains to the cap (early stopping still applies)."""

    seeds: int = 5
    first_seed: int = 1
    eval_every: int = 0
    max_epochs: float = 50.0
    max_time_s: float = 120.0
    target_metric: str | None = None
    target: float | None = None
    higher_is_better: bool = True

    def reached(self, metrics: dict[str, float]) -> bool:
        """Whether an evaluation's metrics meet the target (never without one, never NaN)."""
        if self.target_metric is None or self.target is None:
            return False
        value = metrics.get(self.target_metric)
        if value is None or not math.isfinite(value):
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]

    def describe_target(self) -> str:
        if self.target_metric is None:
            return "no target (trained to the cap)"
        return f"{self.target_metric} {'>=' if self.higher_is_better else '<='} {self.target:g}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CLOSED_LOOP = "closed_loop"
# The scenario axis (bench.workloads.base.serving_axes): today's closed loop, and MLPerf
# Inference's LoadGen scenarios (bench.measurement.serving).
SCENARIOS = (CLOSED_LOOP, "single_stream", "multi_stream", "server", "offline")


@dataclass(frozen=True)
class ServingSpec:
    """How a scenario case is served (``serving = {...}`` in a benchmark): MLPerf LoadGen's
    settings, its minimum duration and query count scaled down for CPU suites.

    The SUT batches dynamically: a batch closes at ``batch_size`` samples (the case's
    axis: the server's max batch, the offline batch, the multi-stream query) or
    ``max_wait_ms`` after its first sample arrived (server only; 0: never wait). Server
    runs at ``server_qps``, or (0) searches the capacity: the highest Poisson arrival rate
    whose ``latency_percentile`` latency stays within ``latency_bound_ms``, by bisection
    to ``capacity_tolerance``, each probe one LoadGen run.

    A phase that serves tokens (generate) runs LoadGen with token latencies: the server's
    bound is then on the ``latency_percentile`` TTFT and TPOT (``ttft_bound_ms``,
    ``tpot_bound_ms``, MLPerf's LLM constraints), and samples meeting both count as goodput
    in every scenario. Unset (None) bounds are left out of the settings, so the keys of
    cases written before they existed stay the same."""

    latency_bound_ms: float = 20.0
    latency_percentile: float = 0.99
    server_qps: float = 0.0
    max_wait_ms: float = 1.0
    min_duration_s: float = 1.0
    min_queries: int = 64
    capacity_tolerance: float = 0.05
    max_probes: int = 12
    sample_count: int = 256  # LoadGen's query sample library: distinct sample indices
    ttft_bound_ms: float | None = None
    tpot_bound_ms: float | None = None

    @property
    def has_token_bounds(self) -> bool:
        return self.ttft_bound_ms is not None and self.tpot_bound_ms is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in _TOKEN_BOUNDS}


_TOKEN_BOUNDS = ("ttft_bound_ms", "tpot_bound_ms")


@dataclass(frozen=True)
class SearchDimension:
    """One axis of a hyperparameter search (``bench tune``): a list of choices, or a
    numeric range ``[low, high]`` (log-uniform with ``log``) for int and float axes."""

    axis: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def grid(self, points: int) -> tuple[Any, ...]:
        """Values for a grid search: the choices, or ``points`` values spanning the range
        (geometrically with ``log``), rounded for integer axes."""
        if self.choices is not None:
            return self.choices
        if points == 1:
            return (self.low,)
        if self.log:
            ratio = (self.high / self.low) ** (1 / (points - 1))
            values = [self.low * ratio ** i for i in range(points)]
        else:
            values = [self.low + (self.high - self.low) * i / (points - 1)
                      for i in range(points)]
        if self.integer:
            return tuple(sorted({round(v) for v in values}))
        return tuple(float(f"{v:.6g}") for v in values)


@dataclass(frozen=True)
class BenchmarkSpec:
    """One ``[[benchmark]]`` table: a workload, a phase, fixed params and matrix axes."""

    workload: str
    phase: str
    matrix: dict[str, tuple[Any, ...]]
    label: str | None
    named_axes: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    accuracy: tuple[AccuracyTarget, ...] = ()
    budget: Budget = field(default_factory=Budget)
    parity_target: float = DEFAULT_PARITY_TARGET
    # The variant axes and their declared defaults: the case accuracy parity compares with.
    parity_reference: dict[str, Any] = field(default_factory=dict)
    slo: dict[str, float] = field(default_factory=dict)  # SLO_KEYS: what every case must meet
    training: TrainingRunSpec | None = None  # time-to-accuracy mode (target = {...})
    search: tuple[SearchDimension, ...] = ()  # bench tune's search space (search = {...})
    serving: ServingSpec | None = None  # scenario cases' LoadGen settings (serving = {...})
    # How its cases run (bench.modes), when the suite names one; else the mode the case's
    # shape picks (ranks, a target, a scenario, the closed loop).
    mode: str | None = None
    # The matrix's exclude and include lists (GitHub Actions' matrix semantics): each entry
    # maps axes to the values it names. A combination matching every axis of an exclude
    # entry is left out; then each include entry adds its combinations, the axes it does
    # not name taking every matrix value.
    exclude: tuple[dict[str, tuple[Any, ...]], ...] = ()
    include: tuple[dict[str, tuple[Any, ...]], ...] = ()


# Service levels a benchmark's cases must meet, checked by the report and by bench gate:
# name -> what it bounds.
SLO_KEYS = {
    "median_ms": "median step time, at most (ms)",
    "p50_ms": "50th percentile latency, at most (ms)",
    "p90_ms": "90th percentile latency, at most (ms)",
    "p99_ms": "99th percentile latency, at most (ms)",
    "min_throughput": "throughput, at least (the case's unit per second)",
    "max_peak_mib": "peak memory, at most (MiB: CUDA allocated, else anonymous RSS, else RSS)",
    "min_speedup": "speed-up over the parity reference, at least (paired when measured)",
    "min_parity": "task metric as a ratio to the parity reference's, at least",
    "ttft_p50_ms": "generation: median time to first token, at most (ms)",
    "ttft_p99_ms": "generation: 99th percentile time to first token, at most (ms)",
    "tpot_p50_ms": "generation: median time per output token over calls, at most (ms)",
    "tpot_p99_ms": "generation: 99th percentile time per output token over calls, at most (ms)",
    "itl_p99_ms": "generation: 99th percentile inter-token latency, at most (ms)",
}


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    path: str
    description: str
    benchmarks: tuple[BenchmarkSpec, ...]
    sha256: str
    # Rounds in which each variant and its parity reference run back to back (0: none).
    paired_rounds: int = 0


@dataclass(frozen=True)
class CaseIdentity:
    """What names a case and what it is judged against: one object for its spec and its
    record (``CaseSpec.identity``, ``CaseResult.identity``), so a record carries its spec's
    identity by construction (``CaseResult.for_case``) instead of a third copy of fields."""

    case_id: str
    workload: str
    phase: str
    label: str | None
    axes: dict[str, Any]
    params: dict[str, Any]
    parity_reference: dict[str, Any]
    slo: dict[str, float]
    mode: str | None

    def fields(self) -> dict[str, Any]:
        """The record's fields it sets (mutable values copied: each record owns its own)."""
        return {name: dict(value) if isinstance(value, dict) else value
                for name, value in ((f, getattr(self, f)) for f in IDENTITY_FIELDS)}


IDENTITY_FIELDS = tuple(CaseIdentity.__dataclass_fields__)


class CommonAxes:
    """The axes every engine layer and report reads, each with its one default (a workload
    that lacks the axis runs at it), for a case spec and a case record alike: the loader
    fills every declared axis, so the defaults speak only for cases built by hand or
    records of workloads without the axis. (A record's ``parallel`` is its ParallelResult:
    the parallel axis is read as ``parallel_axis``.)"""

    axes: dict[str, Any]

    @property
    def device(self) -> str:
        return str(self.axes.get("device", "cpu"))

    @property
    def precision(self) -> str:
        return str(self.axes.get("precision", "fp32"))

    @property
    def backend(self) -> str:
        return str(self.axes.get("backend", "eager"))

    @property
    def scenario(self) -> str:
        return str(self.axes.get("scenario", CLOSED_LOOP))

    @property
    def parallel_axis(self) -> str:
        return str(self.axes.get("parallel", "none"))

    @property
    def world_size(self) -> int:
        return int(self.axes.get("world_size", 1))

    @property
    def batch_size(self) -> int | None:
        """None for a workload without a batch axis."""
        value = self.axes.get("batch_size")
        return None if value is None else int(value)


@dataclass(frozen=True)
class CaseSpec(CommonAxes):
    """One point of a benchmark's matrix, ready to hand to a worker."""

    workload: str
    phase: str
    axes: dict[str, Any]
    params: dict[str, Any]
    budget: Budget
    accuracy: tuple[AccuracyTarget, ...] = ()
    id_axes: tuple[str, ...] | None = None
    label: str | None = None
    parity_target: float = DEFAULT_PARITY_TARGET
    # A probe (max-batch search) times the step and stops: no task metrics, no FLOP count.
    probe: bool = False
    parity_reference: dict[str, Any] = field(default_factory=dict)
    slo: dict[str, float] = field(default_factory=dict)
    # Run under callgrind and count the step's instructions instead of timing it
    # (bench.measurement.instructions); the parent adds the count to the record.
    count_instructions: bool = False
    # Time-to-accuracy mode: the sweep runs one worker per seed of ``training``, each with
    # its own ``seed`` (RunContext.seed: initialization and data order).
    training: TrainingRunSpec | None = None
    seed: int = 0
    # bench tune: the worker appends each evaluation to this file (JSON lines) and stops
    # the run as pruned once PATH.stop exists.
    progress_file: str | None = None
    # Scenario cases (axis scenario other than closed_loop): LoadGen's settings.
    serving: ServingSpec | None = None
    # The mode the suite named (bench.modes), or None: the one the case's shape picks.
    mode: str | None = None

    def named_axes(self) -> list[tuple[str, Any]]:
        """The axes the suite named (all of them when it named none), in order."""
        names = self.axes if self.id_axes is None else self.id_axes
        return [(key, self.axes[key]) for key in names]

    @property
    def benchmark_key(self) -> str:
        return benchmark_key(self.workload, self.phase, self.label)

    @property
    def case_id(self) -> str:
        """Benchmark key and the axes the suite named, e.g. ``linreg/train[device=cpu]``."""
        axes = ",".join(f"{key}={value}" for key, value in self.named_axes())
        return f"{self.benchmark_key}[{axes}]"

    @property
    def parallel(self) -> str:
        return self.parallel_axis

    @property
    def identity(self) -> CaseIdentity:
        return CaseIdentity(self.case_id, self.workload, self.phase, self.label, self.axes,
                            self.params, self.parity_reference, self.slo, self.mode)

    def to_dict(self) -> dict[str, Any]:
        """The case file a worker reads: every field, as JSON holds it."""
        return plain(self, tuples_as_lists=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseSpec:
        """A case file read back, each field checked against its type; keys of a newer
        bench this one lacks are left out (a parent downgrades what an older worker
        needs: bench.results.migrations.case_for_worker)."""
        return from_dict(cls, data, "case", dropped=[])


def is_distributed(case: CaseSpec) -> bool:
    """Whether the case trains across ranks (the ``parallel`` axis)."""
    return case.parallel != "none"
