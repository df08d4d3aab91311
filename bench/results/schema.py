"""The result file schema (JSON), version 17.

A run file holds ``schema``/``schema_version``, the run's metadata, the machine's
fingerprint and one record per finished case. Every figure keeps its raw samples and
says how it was measured.

Versions (older files are read through ``bench.results.migrations``):
1. the first record.
2. statuses ``diverged`` (a non-finite loss or metric) and ``contended`` (other processes
   took CPU while the case was timed); ``CaseResult.interference`` (what the worker saw
   of other processes while timing). A version-1 file reads unchanged.
3. ``CaseResult.label``, the benchmark's label, so no reader parses it back out of the
   case id (older files get it from their ids, in the migration).
4. ``CaseResult.parity_reference``: the case's variant axes with their declared defaults,
   the case accuracy parity compares with. gpt's ``compile`` boolean axis is now the
   ``backend`` axis every workload shares (``eager`` | ``compile``), in axes and case ids.
5. ``CaseResult.vs_reference``: the case's speed-up over its parity reference measured in
   interleaved worker processes over rounds (paired CI), when the run asked for it
   (``[suite] paired_rounds``); ``CaseResult.slo``: the service levels its benchmark set
   (``bench.spec.model.SLO_KEYS``). Both absent (none) in older files.
6. ``CaseResult.time_to_accuracy`` (time-to-accuracy mode: one training run per seed from
   initialization to a target, evaluated on the clock, with the olympic score) and status
   ``not_converged``; ``CaseResult.classes`` (per-class precision, recall and the confusion
   matrix of a classification case). Both absent (none) in older files. Status ``pruned``
   (a bench tune trial its pruner stopped). digits_cnn's and
   linreg's ``lr`` moved from params to axes (a recipe axis): older records keep it in
   params.
7. ``RunInfo.shard`` (a shard of a fanned-out sweep, ``bench run --shard K/N``: its index,
   count and the case ids it was given) and ``RunInfo.shards`` (a run merged from shard
   files by ``bench merge``: each shard's run id, file and machine fingerprint). Both
   absent (none, empty) in older files. ``CaseResult.parallel``: a case trained across
   ranks (``parallel`` = ddp | fsdp2, ``world_size``): per-rank step times and memory,
   straggler spread, exposed communication; none in older files. gpt's and
   digits_cnn's ``parallel`` and ``world_size`` axes (defaults none and 1).
8. ``CaseResult.serving`` (MLPerf LoadGen scenarios: each LoadGen run, the capacity search,
   latency samples), ``.energy`` (NVML or RAPL joules per sample) and ``.clocks`` (clock,
   temperature and throttle samples); the ``scenario`` axis. All absent in older files.
9. ``TimingResult.trial_timing`` (``per_iteration``, or ``block``: CUDA throughput trials
   timed by one event pair around the block, one sample per trial, its mean) and
   ``.latency_trial_samples_s`` (the separate per-step trials latency percentiles come
   from when trials are block-timed). Older files: ``per_iteration``, none.
10. ``RunInfo.host_probes``: the host probe's kernels timed before the first case and after
    the last (``bench run --host-probe``, bench.measurement.host_probe), so reports can tell
    a slower host from slower code. Empty in older files.
11. ``budget.contended_above`` in each case's recorded budget: the share of the machine's CPU
    that others may take before the case is ``contended`` (older files: 0.10, implied).
12. ``RankReport.interference``, ``.energy`` and ``.clocks``: what each rank of a case trained
    across ranks saw around its own timed region (the case's figures combine them: contended
    when any rank was, energy summed over hosts). Absent (none) in older files, whose ranks
    recorded neither; their cases' energy, clocks and interference are none too.
    ``CaseResult.mode``: the mode (bench.modes) the case's suite named, none where it named
    none (the case's shape picked it; ``worker.mode`` says which ran). None in older files.
13. The figures the gate decides on left ``details`` for typed fields: ``CaseResult.rounds``
    (each worker process's median in run order, the rounds of a paired session among them,
    with the contended rounds left out and why; was ``details.process_medians_s``,
    ``ab_rounds``, ``ab_dropped_rounds``, ``ab_dropped_reasons`` and ``ab_unmeasured``),
    ``CaseResult.instructions`` (was ``details.instructions_steps``,
    ``instructions_per_step`` and ``instructions_method``) and
    ``CaseResult.injected_slowdown`` (was ``details.injected_slowdown``). The migration moves
    them. ``PairedSpeedup.left_out`` and ``.contended``: paired rounds now leave out rounds
    timed under contention, as ``bench ab`` does (older files: 0, false).
14. ``CaseResult.generation``: a text-generation case's token times and figures (TTFT, TPOT,
    ITL, prefill and decode tokens/s, the KV cache computed and measured, the weights'
    bytes), with each figure's definition. Absent (none) in older files, which have no
    such case.
15. Served text generation (LoadGen's token latencies): ``LoadGenRun.ttft_ms`` and
    ``.tpot_ms`` (LoadGen's TTFT and TPOT percentiles), ``.tokens_per_s``,
    ``.requests_meeting_bounds`` and ``.goodput_per_s`` (samples meeting the TTFT and TPOT
    bounds, per second); ``ServingResult.ttft_samples_s`` and ``.tpot_samples_s`` (the
    SUT's per-sample figures); the serving settings ``ttft_bound_ms`` and
    ``tpot_bound_ms``. Absent (none, empty) in older files, which served no tokens.
16. ``ParallelResult.data_parallel_size``: how many ranks train on different data (the
    world size for data-parallel modes, 1 for tensor parallelism, whose ranks share a
    batch). Older files, whose modes were all data-parallel: the world size.
17. ``RankReport.pipeline_bubble`` and ``ParallelResult.pipeline_bubble``: under pipeline
    parallelism, each stage's measured idle share of the schedule (1 - its forward and
    backward chunks' time / the schedule's, median over the timed steps) and their mean
    over the stages; the ``fsdp2_tp`` mode (2-D mesh), whose ``data_parallel_size`` is
    world_size / tp_size. Absent (none) in older files, which ran no pipeline.
    ``ParallelResult.exposed_communication_ci_s``: exposed communication is now the mean of
    paired rounds (with and without gradient sync, interleaved), with its 95% interval;
    older files took the difference of two separate medians and have none.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bench.spec.model import IDENTITY_FIELDS, CaseIdentity, CaseSpec, CommonAxes, benchmark_key
from bench.typed import SchemaError, plain
from bench.units import DEFAULT_PARITY_TARGET

SCHEMA_NAME = "bench.run"
SCHEMA_VERSION = 17

# TimingResult.trial_timing: a sample per step, or one per block of steps (its mean).
TRIAL_PER_ITERATION = "per_iteration"
TRIAL_BLOCK = "block"
TRIAL_TIMINGS = (TRIAL_PER_ITERATION, TRIAL_BLOCK)

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_ERROR = "error"  # the workload raised a Python exception
STATUS_CRASHED = "crashed"  # the worker died (signal, non-zero exit, no result)
STATUS_TIMEOUT = "timeout"
STATUS_OOM = "oom"
STATUS_DIVERGED = "diverged"  # a loss or task metric became NaN or infinite
# Timed, but other processes took CPU meanwhile (bench.measurement.interference): the
# figures are kept and shown, and the gate calls the case inconclusive instead of judging it.
STATUS_CONTENDED = "contended"
# Time-to-accuracy: two or more of the case's seeds did not reach the target within the cap.
STATUS_NOT_CONVERGED = "not_converged"
# A hyperparameter search's pruner stopped the trial's run early (bench tune).
STATUS_PRUNED = "pruned"
STATUSES = (STATUS_OK, STATUS_SKIPPED, STATUS_ERROR, STATUS_CRASHED, STATUS_TIMEOUT, STATUS_OOM,
            STATUS_DIVERGED, STATUS_CONTENDED, STATUS_NOT_CONVERGED, STATUS_PRUNED)
# Statuses whose timing, memory and accuracy figures are complete and comparable.
MEASURED_STATUSES = frozenset({STATUS_OK, STATUS_CONTENDED})
# A case that should have run and did not: `bench run` exits 1 when any case ends so.
FAILED_STATUSES = frozenset({STATUS_ERROR, STATUS_CRASHED, STATUS_TIMEOUT, STATUS_OOM})

# The test knob that injects it: BENCH_TEST_SLOWDOWN=0.1 makes every step 10% longer.
SLOWDOWN_ENV = "BENCH_TEST_SLOWDOWN"


@dataclass
class TimingResult:
    timer: str
    timer_description: str
    step_description: str
    cold_start_s: float
    warmup_iterations: int
    warmup_steady: bool
    warmup_s: float
    iters_per_trial: int
    trial_samples_s: list[list[float]]
    trial_means_s: list[float]
    median_s: float
    mean_s: float
    std_s: float
    cv: float
    ci_low_s: float
    ci_high_s: float
    ci_level: float
    ci_method: str
    latency_s: dict[str, float]
    stop_reason: str
    statistic: str = "median over trials of the trial's mean seconds per step"
    # How trial_samples_s were taken: "per_iteration" (a duration per step) or "block"
    # (one sample per trial, the block's mean: one CUDA event pair around the block).
    trial_timing: str = TRIAL_PER_ITERATION
    # Block-timed trials: the per-step durations of the separate latency trials that
    # latency_s is read from (empty where the trials' own samples are per step).
    latency_trial_samples_s: list[list[float]] = field(default_factory=list)

    def latency_samples(self) -> list[float]:
        """Per-step durations latency percentiles are read from."""
        return [d for t in self.latency_trial_samples_s or self.trial_samples_s for d in t]

    @staticmethod
    def summary_fields(summary: Any) -> dict[str, Any]:
        """The statistics fields from a ``bench.measurement.stats.Summary`` (one mapping
        for the worker and for pooled processes)."""
        return {"median_s": summary.median, "mean_s": summary.mean, "std_s": summary.std,
                "cv": summary.cv, "ci_low_s": summary.ci_low, "ci_high_s": summary.ci_high,
                "ci_level": summary.ci_level, "ci_method": summary.ci_method}


@dataclass
class ThroughputResult:
    value: float
    ci_low: float
    ci_high: float
    unit: str
    samples_per_step: int
    method: str

    @classmethod
    def from_timing(cls, timing: TimingResult, samples_per_step: int,
                    unit: str) -> ThroughputResult:
        low = timing.ci_low_s
        return cls(
            value=samples_per_step / timing.median_s,
            ci_low=samples_per_step / timing.ci_high_s,
            ci_high=samples_per_step / low if low > 0 else float("inf"),
            unit=unit, samples_per_step=samples_per_step,
            method="samples_per_step / median step time; CI mapped from the step-time CI",
        )


@dataclass
class MemoryResult:
    baseline_rss_mib: float
    peak_rss_mib: float
    rss_high_water_mib: float
    cuda_peak_allocated_mib: float | None
    cuda_peak_reserved_mib: float | None
    nvml_peak_used_mib: float | None
    sample_interval_s: float
    samples: int
    method: str
    peak_anon_rss_mib: float | None = None

    # "The peak this case used", in one documented order: what the device allocated on
    # CUDA; on the host the anonymous RSS (heap and stacks: the same across venvs and
    # page-cache states, where file-backed library pages differed by 59 MiB); else the RSS.
    PEAK_ORDER: ClassVar[tuple[tuple[str, str], ...]] = (
                  ("cuda_peak_allocated_mib", "CUDA peak allocated"),
                  ("peak_anon_rss_mib", "peak anonymous RSS"),
                  ("peak_rss_mib", "peak RSS"))

    def peak(self) -> tuple[float | None, str | None]:
        """(MiB, what it is) of the first figure of PEAK_ORDER this record has."""
        for attr, kind in self.PEAK_ORDER:
            value = getattr(self, attr)
            if value:
                return value, kind
        return None, None


@dataclass
class AccuracyResult:
    metrics: dict[str, float]
    targets: list[dict[str, Any]]
    passed: bool | None
    failures: list[str] = field(default_factory=list)
    task_metric: str | None = None
    higher_is_better: bool | None = None
    parity_target: float = DEFAULT_PARITY_TARGET

    @classmethod
    def for_case(cls, case: Any, metrics: dict[str, float],
                 task_metric: tuple[str, bool] | None) -> AccuracyResult:
        """The metrics against a CaseSpec's accuracy targets and parity target."""
        failures, results = [], []
        for target in case.accuracy:
            value = metrics.get(target.metric)
            ok = target.check(value)
            results.append(ok)
            if ok is False:
                failures.append(f"{target.metric}={value:.4g} outside "
                                f"[{target.min if target.min is not None else '-inf'}, "
                                f"{target.max if target.max is not None else 'inf'}]")
        passed = None if not results else all(r is True for r in results)
        name, higher = task_metric if task_metric else (None, None)
        return cls(metrics=metrics, targets=[dataclasses.asdict(t) for t in case.accuracy],
                   passed=passed, failures=failures, task_metric=name,
                   higher_is_better=higher, parity_target=case.parity_target)


@dataclass
class ModelResult:
    """What was built and timed: the variant steps applied, its size and sparsity."""

    variant: list[str]
    bytes: int
    bytes_method: str
    parameters: int
    nonzero_parameters: int
    prunable_weights: int
    weight_sparsity: float
    int8_weights: int
    export_check: dict[str, Any] | None
    build_s: dict[str, float]
    reference_parameters: int | None = None
    sparsity_method: str = "zeros / elements over every Linear/Conv weight, after pruning " \
                           "and before quantization"


@dataclass
class ComputeResult:
    """FLOPs per step and MFU against a measured and a spec peak (bench.measurement.flops)."""

    flops_per_step: float
    flops_method: str
    analytic_flops_per_step: float
    analytic_formula: str
    counted_over_analytic: float
    achieved_tflops: float
    achieved_method: str
    compute_dtype: str
    device_name: str
    peak_measured_tflops: float
    peak_measured_method: str
    mfu_measured: float
    peak_spec_tflops: float | None
    peak_spec_source: str
    mfu_spec: float | None


@dataclass
class InterferenceResult:
    """What else ran on the machine while the case was timed (bench.measurement.interference)."""

    wall_s: float
    cores: int
    own_cpu_s: float
    others_cpu_s: float
    others_share: float
    steal_share: float
    own_cpu_per_thread: float | None
    threads: int
    contended: bool
    threshold: float
    method: str


@dataclass
class PairedSpeedup:
    """How much faster a case runs than its parity reference, from rounds in which both
    ran in fresh worker processes back to back (order alternating), so drift between
    rounds cancels in each round's ratio."""

    reference_case: str
    rounds: int
    speedup: float  # reference median / case median: above 1, the case is faster
    ci_low: float
    ci_high: float
    p_value: float
    reference_medians_s: list[float]
    case_medians_s: list[float]
    method: str
    # Schema 13: rounds left out because an arm was timed under contention; with fewer
    # than two clean rounds, the contended ones stand and ``contended`` says so.
    left_out: int = 0
    contended: bool = False


@dataclass
class EvalPoint:
    """One evaluation of a training run, taken on the run's clock."""

    steps: int
    samples: int
    epochs: float
    time_s: float  # wall seconds since the run's first step, evaluations included
    train_loss: float  # mean training loss of the steps since the previous evaluation
    metrics: dict[str, float]


@dataclass
class SeedRun:
    """One training run of a time-to-accuracy case: one seed, in its own worker."""

    seed: int
    converged: bool
    stop_reason: str  # target | max_epochs | max_time | early_stopping | non_finite | pruned
    steps: int
    samples: int
    epochs: float
    wall_s: float  # first step to the last evaluation, evaluations included
    train_s: float  # the timed steps alone
    eval_s: float  # the evaluations alone
    median_step_s: float
    steps_to_target: int | None
    samples_to_target: int | None
    epochs_to_target: float | None
    time_to_target_s: float | None  # wall, evaluations on the clock (MLPerf's rule)
    best_metric: float | None  # of the watched metric (the target's, else the task metric)
    best_steps: int | None
    final_metric: float | None
    # Early stopping: the cap's epochs minus those run, and that many epochs at this run's
    # own pace (wall seconds per epoch, evaluations included).
    epochs_saved: float | None
    time_saved_s: float | None
    curve: list[EvalPoint]
    pid: int | None = None


@dataclass
class TimeToAccuracyResult:
    """Time-to-accuracy over seeds (MLPerf Training's rules, scaled down)."""

    settings: dict[str, Any]  # bench.spec.model.TrainingRunSpec.to_dict()
    target: str  # e.g. "val_accuracy >= 0.97", or "no target (trained to the cap)"
    metric: str  # the watched metric: the target's, else the task metric
    higher_is_better: bool
    early_stopping_patience: int  # evaluations without improvement (0: off)
    runs: list[SeedRun]
    converged: int
    score_s: float | None  # olympic mean of the wall time to target
    score_samples: float | None
    score_steps: float | None
    score_epochs: float | None
    method: str

    def times_to_target(self) -> list[float]:
        """Each seed's wall time to target, +inf for a run that did not converge (rank
        tests and the olympic score count it as the slowest)."""
        return [r.time_to_target_s if r.converged and r.time_to_target_s is not None
                else math.inf for r in self.runs]


@dataclass
class ClassReport:
    """Per-class figures of a classification case (error analysis): the confusion matrix
    (rows: true class, columns: predicted) and each class's precision, recall, F1 and
    support, from scikit-learn's metrics."""

    labels: list[str]
    confusion: list[list[int]]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    method: str

    def recall_of(self, label: str) -> float | None:
        return self.recall[self.labels.index(label)] if label in self.labels else None


@dataclass
class RankReport:
    """One rank of a case trained across processes (bench.modes.ranks)."""

    rank: int
    host: str
    pid: int
    step_median_s: float  # this rank's own median step over the timed trials
    # This rank's own duration of every timed step, in order (the case's step is the
    # slowest rank's, step by step).
    step_samples_s: list[float] = field(default_factory=list)
    # This rank's parameters, gradients and optimizer state (its shards under fsdp2).
    memory_split: dict[str, Any] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    cuda_peak_allocated_mib: float | None = None
    # Around this rank's own timed region (bench.modes.trackers).
    interference: InterferenceResult | None = None
    energy: EnergyResult | None = None
    clocks: ClockResult | None = None
    # pp: the share of the schedule's run this rank's stage spent outside its forward
    # and backward chunks (waiting on the other stages), median over the timed steps.
    pipeline_bubble: float | None = None


@dataclass
class ParallelResult:
    """How a case trained across ranks: the mode, the ranks and the figures only several
    ranks have (the case's timing is the slowest rank's, step by step)."""

    mode: str
    world_size: int
    nnodes: int
    process_group: str  # gloo | nccl
    threads_per_rank: int
    launcher: str
    global_batch: int  # samples per optimizer step over all ranks
    samples_per_s_per_device: float
    samples_per_s_total: float
    # Median over the timed steps of (slowest - fastest rank) / slowest, and its maximum.
    straggler_median_spread: float
    straggler_max_spread: float
    # The same step with its gradient communication switched off (DDP no_sync, FSDP2
    # set_requires_gradient_sync(False)); exposed communication is the difference, from
    # paired rounds (schema 17), with its 95% interval (tp: profiled, no interval).
    no_sync_step_s: float | None = None
    exposed_communication_s: float | None = None
    exposed_communication_ci_s: list[float] | None = None
    ranks: list[RankReport] = field(default_factory=list)
    method: str = ""
    # Ranks training on different data (global_batch is theirs together): world_size for
    # ddp, fsdp2 and hogwild; 1 for tp, whose ranks split the model and share a batch;
    # world_size / tp_size for fsdp2_tp.
    data_parallel_size: int | None = None
    # pp: the measured bubble, the mean of the stages' RankReport.pipeline_bubble.
    pipeline_bubble: float | None = None


@dataclass
class EnergyResult:
    """Energy over a timed region (bench.measurement.energy), or why it was not measurable."""

    measured: bool
    method: str
    seconds: float
    joules: float | None = None
    samples: int | None = None  # samples processed in the region
    joules_per_sample: float | None = None
    samples_per_joule: float | None = None
    mean_watts: float | None = None
    domains: dict[str, float] = field(default_factory=dict)  # joules per counter
    resolution: str = ""
    reason: str | None = None  # measured False: why


@dataclass
class ClockResult:
    """Clocks, temperature, power and throttle reasons sampled during the timed region
    (bench.measurement.clocks); ``throttled`` by the rule in ``method``."""

    samples: int
    interval_s: float
    throttled: bool
    method: str
    cpu_mhz: dict[str, float] = field(default_factory=dict)  # min / median / max
    gpu_sm_mhz: dict[str, float] = field(default_factory=dict)
    gpu_temperature_c: dict[str, float] = field(default_factory=dict)
    gpu_power_w: dict[str, float] = field(default_factory=dict)
    throttle_reasons: list[str] = field(default_factory=list)  # NVML's, as seen
    unreadable: list[str] = field(default_factory=list)  # what could not be read, and why


@dataclass
class RoundsResult:
    """A case timed in several worker processes, each a round (schema 13): the processes
    of one run (budget ``processes``), or the rounds of a paired session (``bench ab``: one
    process per side per round; the two sides' files pair round by round)."""

    medians_s: list[float]  # each kept round's median seconds per step, in run order
    # Rounds of a paired session left out because a side was timed under contention, and
    # why (the first five).
    left_out: int = 0
    left_out_reasons: list[str] = field(default_factory=list)
    # A paired session's time budget ran out before the case's first round (it is skipped).
    out_of_time: bool = False


@dataclass
class InstructionCount:
    """Instructions the worker's steps executed under callgrind (schema 13;
    bench.measurement.instructions): deterministic, so one count per side suffices."""

    steps: int  # steps run while callgrind collected
    per_step: float | None = None  # set by the parent, from callgrind's total
    method: str = ""


@dataclass
class GenerationResult:
    """A text-generation case (schema 14; the generate phase, bench.modes.generate): each
    timed call's token times, the figures from them (bench.measurement.generation, whose
    definitions are written in ``definitions``), and the memory split."""

    batch: int
    input_tokens: int  # per sequence
    output_tokens: int  # per sequence, exactly (greedy, end-of-sequence held back)
    calls: int  # timed calls (after the cold call and the warm-up)
    ttft_s: dict[str, float]  # p50 / p90 / p99 over calls
    tpot_s: dict[str, float] | None  # over calls; None for a one-token output
    itl_s: dict[str, float] | None  # over every gap of every call
    end_to_end_s: dict[str, float]
    prefill_tokens_per_s: float  # median over calls
    decode_tokens_per_s: float | None  # median over calls
    # Raw: each timed call's token times from its start (seconds), in call order.
    token_times_s: list[list[float]]
    cold_token_times_s: list[float]  # the first call's (compile, cache allocation)
    warmup_calls: int
    weights_bytes: int  # the variant's state dict as torch.save writes it
    # From the config: 2 x layers x batch x KV heads x head dim x (input + output - 1) tokens
    # x element bytes (the last new token is never fed back, so never cached).
    kv_cache_computed_bytes: int
    kv_cache_measured_bytes: int | None  # the key and value tensors of the last call's cache
    kv_cache: str  # dynamic | static
    missing: dict[str, str] = field(default_factory=dict)  # figure -> why it is absent
    definitions: dict[str, str] = field(default_factory=dict)
    method: str = ""

    def percentile_ms(self, figure: str, percentile: str) -> float | None:
        """``figure`` (ttft, tpot or itl) at ``percentile`` (p50...) in ms; None where it
        is undefined (TPOT of a one-token output)."""
        values = getattr(self, f"{figure}_s")
        return None if values is None or percentile not in values else \
            values[percentile] * 1e3


@dataclass
class LoadGenRun:
    """One MLPerf LoadGen test (bench.measurement.serving): its figures, read from LoadGen's
    detail log, and whether the run met the latency bound."""

    scenario: str
    target_qps: float | None  # server: the Poisson arrival rate asked for
    validity: str  # LoadGen's result_validity: VALID | INVALID
    invalid_reason: str | None
    perf_constraints_met: bool | None  # LoadGen: the bound percentile within the bound
    min_duration_met: bool | None
    min_queries_met: bool | None
    early_stopping_met: bool | None
    # Ours: perf constraints, min duration and min queries met (LoadGen's early stopping
    # needs thousands of queries at p99, more than a CPU suite runs; it is kept beside).
    meets_bound: bool
    samples_per_s: float  # LoadGen's result_completed_samples_per_sec
    scheduled_samples_per_s: float | None
    queries: int
    samples: int
    latency_ms: dict[str, float]  # LoadGen's: min, mean, p50, p90, p95, p97, p99, p99.9, max
    mean_batch: float  # the SUT's batches: mean samples per model call
    duration_s: float
    energy: EnergyResult | None = None
    # Token serving (schema 15): LoadGen's TTFT (issue to first token; offline: none) and
    # TPOT ((latency - TTFT) / (tokens - 1)), min, mean, p50...p99.9, max in ms; its token
    # rate; samples whose own TTFT and TPOT met both bounds (the SUT's figures), and
    # goodput: samples_per_s x their share.
    ttft_ms: dict[str, float] | None = None
    tpot_ms: dict[str, float] | None = None
    tokens_per_s: float | None = None
    requests_meeting_bounds: int | None = None
    goodput_per_s: float | None = None


@dataclass
class ServingResult:
    """A LoadGen scenario case: its runs (server capacity search: every probe, in order),
    the run the headline figures come from, and LoadGen's summary log of that run."""

    scenario: str
    loadgen_version: str
    settings: dict[str, Any]  # bench.spec.model.ServingSpec.to_dict() and effective values
    sut: str
    cold_start_s: float
    warmup: str
    runs: list[LoadGenRun]
    headline: int  # index into runs
    capacity_qps: float | None = None  # server search: the highest rate meeting the bound
    capacity_method: str | None = None
    # The headline run's per-sample latencies as the SUT saw them (LoadGen's issue callback
    # to completion), raw, for the latency CDF; LoadGen's own percentiles are in the run.
    latency_samples_s: list[float] = field(default_factory=list)
    summary_log: str = ""
    # Token serving: the headline run's per-sample TTFT and TPOT as the SUT saw them (the
    # same samples and stride as latency_samples_s).
    ttft_samples_s: list[float] = field(default_factory=list)
    tpot_samples_s: list[float] = field(default_factory=list)

    @property
    def headline_run(self) -> LoadGenRun:
        return self.runs[self.headline]

    @property
    def bound_percentile(self) -> str:
        """The latency key the bound applies to (``latency_ms``'s: p99, p90, p99.9...)."""
        value = self.settings.get("latency_percentile", 0.99)
        return f"p{float(value) * 100:g}" if isinstance(value, int | float) else "p99"

    @property
    def token_bounds_ms(self) -> tuple[float, float] | None:
        """Token serving's (TTFT, TPOT) bounds, None where the case set none."""
        ttft, tpot = self.settings.get("ttft_bound_ms"), self.settings.get("tpot_bound_ms")
        if isinstance(ttft, int | float) and isinstance(tpot, int | float):
            return float(ttft), float(tpot)
        return None

    @property
    def serves_tokens(self) -> bool:
        return self.headline_run.tpot_ms is not None

    def bound_text(self) -> str:
        """The server's bound as LoadGen held it: the latency percentile, or with token
        latencies the TTFT and TPOT percentiles; "" for the other scenarios."""
        if self.scenario != "server":
            return ""
        key = self.bound_percentile
        if self.serves_tokens and (bounds := self.token_bounds_ms) is not None:
            return f"{key} TTFT <= {bounds[0]:g} ms, {key} TPOT <= {bounds[1]:g} ms"
        return f"{key} <= {float(self.settings.get('latency_bound_ms', 0)):g} ms"


@dataclass
class CaseResult(CommonAxes):
    case_id: str
    workload: str
    phase: str
    axes: dict[str, Any]
    params: dict[str, Any]
    status: str
    reason: str | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    timing: TimingResult | None = None
    throughput: ThroughputResult | None = None
    memory: MemoryResult | None = None
    accuracy: AccuracyResult | None = None
    model: ModelResult | None = None
    compute: ComputeResult | None = None
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stderr_tail: str | None = None
    worker: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None
    finished_at: str | None = None
    interference: InterferenceResult | None = None
    label: str | None = None  # the benchmark's label (schema 3)
    # The variant axes and their declared defaults: parity's reference case (schema 4).
    parity_reference: dict[str, Any] = field(default_factory=dict)
    vs_reference: PairedSpeedup | None = None  # schema 5
    slo: dict[str, float] = field(default_factory=dict)  # schema 5: its benchmark's SLO
    time_to_accuracy: TimeToAccuracyResult | None = None  # schema 6
    classes: ClassReport | None = None  # schema 6
    parallel: ParallelResult | None = None  # schema 7: trained across ranks
    serving: ServingResult | None = None  # schema 8: a LoadGen scenario
    energy: EnergyResult | None = None  # schema 8: over the timed region
    clocks: ClockResult | None = None  # schema 8: during the timed region
    mode: str | None = None  # schema 12: the mode its suite named (bench.modes), else none
    rounds: RoundsResult | None = None  # schema 13: timed in several processes or rounds
    instructions: InstructionCount | None = None  # schema 13
    # schema 13: the fraction a test-only BENCH_TEST_SLOWDOWN made every step longer.
    injected_slowdown: float | None = None
    generation: GenerationResult | None = None  # schema 14: a text-generation case

    @property
    def benchmark_key(self) -> str:
        """``workload/phase[:label]``: what reports group and match cases by."""
        return benchmark_key(self.workload, self.phase, self.label)

    @property
    def measured(self) -> bool:
        """Whether the case has complete figures (ok, or contended and kept)."""
        return self.status in MEASURED_STATUSES

    @property
    def identity(self) -> CaseIdentity:
        return CaseIdentity(**{name: getattr(self, name) for name in IDENTITY_FIELDS})

    @classmethod
    def for_case(cls, spec: CaseSpec, status: str, reason: str | None = None,
                 **fields: Any) -> CaseResult:
        """A record carrying a CaseSpec's identity and its budget."""
        return cls(**spec.identity.fields(), status=status, reason=reason,
                   budget=spec.budget.to_dict(), **fields)


@dataclass
class HostProbe:
    """Fixed kernels timed on the host beside a run (bench.measurement.host_probe)."""

    when: str  # start | end of the run
    at: str  # UTC, ISO 8601
    kernels: dict[str, float]  # matmul_gflops, python_mips
    method: str
    version: int


@dataclass
class ShardInfo:
    """This run is shard ``index`` of ``count`` of its suite (bench.spec.shards)."""

    index: int
    count: int
    # Every case id the suite gave this shard, measured or not yet: bench merge names the
    # ones a cut-off shard is missing.
    case_ids: list[str] = field(default_factory=list)


@dataclass
class MergedShard:
    """One shard file a merged run was built from, with the machine that measured it."""

    index: int
    count: int
    run_id: str
    source: str
    started_at: str
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunInfo:
    run_id: str
    suite_name: str
    suite_path: str
    suite_sha256: str
    started_at: str
    command: list[str]
    selection: dict[str, list[str]] = field(default_factory=dict)
    # Set by an interleaved A/B run (bench ab): {"session", "side", "rounds", "order",
    # "source", "commit", "env"}; both sides' files share the session id.
    pairing: dict[str, Any] = field(default_factory=dict)
    shard: ShardInfo | None = None
    shards: list[MergedShard] = field(default_factory=list)
    host_probes: list[HostProbe] = field(default_factory=list)

    @classmethod
    def starting(cls, suite: Any, select: dict[str, set[str]] | None = None,
                 run_id: str | None = None, **fields: Any) -> RunInfo:
        """The metadata of a run of ``suite`` (a SuiteSpec) started now by this command."""
        return cls(
            run_id=run_id or uuid.uuid4().hex[:12], suite_name=suite.name,
            suite_path=suite.path, suite_sha256=suite.sha256,
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            command=list(sys.argv),
            selection={k: sorted(v) for k, v in (select or {}).items()}, **fields)


@dataclass
class RunRecord:
    run: RunInfo
    fingerprint: dict[str, Any]
    cases: list[CaseResult] = field(default_factory=list)
    schema: str = SCHEMA_NAME
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        # Schema identification first, for humans opening the file.
        return {"schema": data.pop("schema"), "schema_version": data.pop("schema_version"),
                **data}

    def case(self, case_id: str) -> CaseResult | None:
        return next((c for c in self.cases if c.case_id == case_id), None)


def _finite(values: list[float], where: str, positive: bool = False) -> None:
    for i, v in enumerate(values):
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise SchemaError(f"{where}[{i}]: {v!r} is not a finite "
                              f"{'positive' if positive else 'non-negative'} number")


def check_case(case: CaseResult, where: str) -> None:
    """Invariants every case the engine writes keeps: a known status, and timing and
    throughput figures that are finite (task metrics may be NaN: status diverged)."""
    if case.status not in STATUSES:
        raise SchemaError(f"{where}.status: unknown status {case.status!r} "
                          f"(valid: {', '.join(STATUSES)})")
    t = case.timing
    if t is not None:
        _finite(t.trial_means_s, f"{where}.timing.trial_means_s")
        for i, trial in enumerate(t.trial_samples_s):
            _finite(trial, f"{where}.timing.trial_samples_s[{i}]")
        for i, trial in enumerate(t.latency_trial_samples_s):
            _finite(trial, f"{where}.timing.latency_trial_samples_s[{i}]")
        _finite([t.median_s, t.mean_s, t.cold_start_s], f"{where}.timing.median/mean/cold")
        if t.trial_timing not in TRIAL_TIMINGS:
            raise SchemaError(f"{where}.timing.trial_timing: {t.trial_timing!r} (valid: "
                              f"{', '.join(TRIAL_TIMINGS)})")
    if case.throughput is not None:
        _finite([case.throughput.value], f"{where}.throughput.value")
    if case.memory is not None:
        m = case.memory
        _finite([v for v in (m.peak_rss_mib, m.peak_anon_rss_mib, m.cuda_peak_allocated_mib)
                 if v is not None], f"{where}.memory")
    if case.serving is not None:
        sv = case.serving
        if not 0 <= sv.headline < len(sv.runs):
            raise SchemaError(f"{where}.serving.headline: {sv.headline} is not a run index "
                              f"(runs: {len(sv.runs)})")
        for i, run in enumerate(sv.runs):
            _finite([run.samples_per_s, *run.latency_ms.values()],
                    f"{where}.serving.runs[{i}]")
        _finite(sv.latency_samples_s, f"{where}.serving.latency_samples_s")
        for i, run in enumerate(sv.runs):
            for name in ("ttft_ms", "tpot_ms"):
                if getattr(run, name) is not None:
                    _finite(list(getattr(run, name).values()),
                            f"{where}.serving.runs[{i}].{name}")
        if sv.capacity_qps is not None:
            _finite([sv.capacity_qps], f"{where}.serving.capacity_qps")
    if case.rounds is not None:
        _finite(case.rounds.medians_s, f"{where}.rounds.medians_s", positive=True)
    if "memory_split" in case.details:
        _check_memory_split(case.details["memory_split"], f"{where}.details.memory_split")
    if case.classes is not None:
        _check_classes(case.classes, f"{where}.classes")
    for i, rank in enumerate(case.parallel.ranks if case.parallel is not None else ()):
        _check_memory_split(rank.memory_split, f"{where}.parallel.ranks[{i}].memory_split")


def _check_classes(classes: ClassReport, where: str) -> None:
    """One figure per label in each per-class list, and a labels x labels confusion."""
    n = len(classes.labels)
    for name in ("precision", "recall", "f1", "support"):
        if len(getattr(classes, name)) != n:
            raise SchemaError(f"{where}.{name}: {len(getattr(classes, name))} values for "
                              f"{n} labels (valid: one per label)")
    if len(classes.confusion) != n or any(len(row) != n for row in classes.confusion):
        raise SchemaError(f"{where}.confusion: not {n} x {n} (valid: a row and a column "
                          "per label)")


# The figures of a memory split (bench.workloads._training.memory_split), in MiB.
MEMORY_SPLIT_MIB = ("parameters_mib", "gradients_mib", "optimizer_state_mib",
                    "activations_saved_mib")


def _check_memory_split(split: object, where: str) -> None:
    if not isinstance(split, dict):
        raise SchemaError(f"{where}: expected an object of MiB figures")
    for key in MEMORY_SPLIT_MIB:
        value = split.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SchemaError(f"{where}.{key}: {str(value)[:40]!r} is not a number")
        _finite([value], f"{where}.{key}")


# The fingerprint is free-form (what each machine has), but readers navigate these parts.
_FINGERPRINT_SHAPES = {"cpu": dict, "packages": dict, "threads": dict, "torch_config": dict,
                       "gpus": list, "git": dict, "cuda": dict}


def check_fingerprint(fp: dict[str, Any]) -> None:
    for key, kind in _FINGERPRINT_SHAPES.items():
        value = fp.get(key)
        if value is not None and not isinstance(value, kind):
            expected = "an object" if kind is dict else "a list"
            raise SchemaError(f"fingerprint.{key}: expected {expected}, got "
                              f"{type(value).__name__}")
    for i, gpu in enumerate(fp.get("gpus") or []):
        if not isinstance(gpu, dict) or not isinstance(gpu.get("name"), str):
            raise SchemaError(f"fingerprint.gpus[{i}]: expected an object with a name")


def check_record(record: RunRecord) -> None:
    check_fingerprint(record.fingerprint)
    for i, case in enumerate(record.cases):
        check_case(case, f"cases[{i}]")
