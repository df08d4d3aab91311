"""One record assembly: the figures of a timed region, a run to a target and a phase's
outcome into a case's record. The worker's modes and the ranks' assembly
(bench.modes.ranks) both call these."""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

from bench.measurement.flops import FlopCount, compute_record
from bench.measurement.stats import percentiles, summarize
from bench.measurement.training_run import TrainingTrace, trials_of
from bench.results.schema import (
    SLOWDOWN_ENV,
    STATUS_DIVERGED,
    AccuracyResult,
    CaseResult,
    ThroughputResult,
    TimeToAccuracyResult,
    TimingResult,
)
from bench.workloads import get_workload
from bench.workloads.base import Outcome

if TYPE_CHECKING:
    from bench.measurement.sampler import Measurement
    from bench.spec.model import CaseSpec


def sampled_timing(measurement: Measurement, step_description: str) -> TimingResult:
    """The sampler's figures (bench.measurement.sampler) as the record's timing."""
    return TimingResult(
        timer=measurement.timer, timer_description=measurement.timer_description,
        step_description=step_description, cold_start_s=measurement.cold_start_s,
        warmup_iterations=measurement.warmup_iterations,
        warmup_steady=measurement.warmup_steady, warmup_s=measurement.warmup_s,
        iters_per_trial=measurement.iters_per_trial, trial_samples_s=measurement.trials,
        trial_means_s=measurement.trial_means_s, latency_s=measurement.latency_percentiles_s,
        stop_reason=measurement.stop_reason, trial_timing=measurement.trial_timing,
        latency_trial_samples_s=measurement.latency_trials,
        **TimingResult.summary_fields(measurement.summary),
    )


def training_run_timing(trace: TrainingTrace, timer_name: str, timer_description: str,
                        step_description: str) -> TimingResult:
    """The engine's per-step figures from the steps of the real training run."""
    cold, trials = trials_of(trace)
    means = [sum(t) / len(t) for t in trials]
    return TimingResult(
        timer=timer_name, timer_description=timer_description,
        step_description=step_description, cold_start_s=cold, warmup_iterations=0,
        warmup_steady=True, warmup_s=0.0,
        iters_per_trial=trace.steps_per_eval, trial_samples_s=trials, trial_means_s=means,
        latency_s=percentiles([d for t in trials for d in t]), stop_reason="training_run",
        statistic="median over the intervals between evaluations of the interval's mean "
                  "seconds per optimizer step: every step of the time-to-accuracy run "
                  "itself (the first step is the cold start; no separate warm-up)",
        **TimingResult.summary_fields(summarize(means)))


def record_timing(result: CaseResult, timing: TimingResult, samples_per_step: int,
                  sample_unit: str) -> None:
    """Timing, throughput and the injected-slowdown warning into ``result``."""
    result.timing = timing
    result.throughput = ThroughputResult.from_timing(timing, samples_per_step,
                                                     f"{sample_unit}/s")
    if result.injected_slowdown:
        result.warnings.append(f"injected slowdown: every step spun "
                               f"{result.injected_slowdown:.0%} longer "
                               f"({SLOWDOWN_ENV}, a test knob)")


def with_injected_slowdown(step: Any, result: CaseResult) -> Any:
    """Test-only knob (gate-quality measurements, regression-gate tests): with
    BENCH_TEST_SLOWDOWN=0.1 every step takes 10% longer (it spins for 0.1 x its own
    duration). Recorded in the result, never silent. CPU steps only: a CUDA step returns
    before its kernels finish."""
    fraction = float(os.environ.get(SLOWDOWN_ENV, "0") or 0)
    if fraction <= 0:
        return step
    if not math.isfinite(fraction):
        raise ValueError(f"{SLOWDOWN_ENV}={fraction!r} is not a finite fraction")
    result.injected_slowdown = fraction

    def slowed() -> object:
        started = time.perf_counter()
        out = step()
        until = time.perf_counter() + (time.perf_counter() - started) * fraction
        while time.perf_counter() < until:
            pass
        return out

    return slowed


def divergence(metrics: dict[str, float], details: dict[str, Any]) -> str | None:
    """Why a case diverged (a task metric NaN or infinite), or None."""
    bad = {k: v for k, v in metrics.items()
           if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return None
    text = "non-finite " + ", ".join(f"{k}={v}" for k, v in bad.items())
    step = details.get("first_nonfinite_step")
    if step is not None:
        text += f"; the training loss was first non-finite at optimizer step {step}"
    return text


def record_outcome(case: CaseSpec, outcome: Outcome, result: CaseResult,
                   flops: FlopCount | None = None) -> None:
    """A phase's task metrics (against the case's targets), its model and classes, the
    compute figures of ``flops`` over the recorded median step, and divergence."""
    result.accuracy = AccuracyResult.for_case(
        case, outcome.metrics,
        outcome.task_metric or get_workload(case.workload).task_metric(case.phase))
    result.details.update(outcome.details)
    result.model = outcome.model
    result.classes = outcome.classes
    if flops is not None and result.timing is not None:
        result.compute = compute_record(flops, result.timing.median_s, case.device)
    diverged = divergence(outcome.metrics, outcome.details)
    if diverged:
        result.status, result.reason = STATUS_DIVERGED, diverged


def record_training_run(case: CaseSpec, trace: TrainingTrace, outcome: Outcome,
                        result: CaseResult) -> None:
    """A seed's run to its target and its final outcome into ``result``."""
    workload = get_workload(case.workload)
    metric, higher = workload.watched_metric(case)
    patience = int(case.axes.get("early_stopping", 0))
    result.accuracy = AccuracyResult.for_case(case, outcome.metrics,
                                              workload.task_metric(case.phase))
    result.details.update(outcome.details)
    result.classes = outcome.classes
    result.time_to_accuracy = TimeToAccuracyResult(
        settings=case.training.to_dict(), target=case.training.describe_target(),
        metric=metric, higher_is_better=higher, early_stopping_patience=patience,
        runs=[trace.run], converged=int(trace.run.converged), score_s=None,
        score_samples=None, score_steps=None, score_epochs=None,
        method="one seed (the sweep merges the seeds' runs)")
    diverged = divergence(outcome.metrics, {})
    if trace.run.stop_reason == "non_finite" or diverged:
        result.status = STATUS_DIVERGED
        result.reason = diverged or "non-finite training loss at step " \
                                    f"<= {trace.run.steps}"
