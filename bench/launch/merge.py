"""Pool the results of one case run in several independent worker processes."""

from __future__ import annotations

import dataclasses
import statistics

from bench.measurement.classes import pooled as pooled_classes
from bench.measurement.stats import olympic, percentiles, summarize
from bench.results.schema import (
    STATUS_CONTENDED,
    STATUS_DIVERGED,
    STATUS_NOT_CONVERGED,
    STATUS_OK,
    CaseResult,
    RoundsResult,
    ThroughputResult,
    TimingResult,
)

# Seed runs that ended with one of these are training runs (converged or not); any other
# status (error, crash, timeout, oom) fails the case.
_RUN_STATUSES = (STATUS_OK, STATUS_CONTENDED, STATUS_DIVERGED)
# A process whose figures are measured: ok, or contended (timed while the host took CPU).
_MEASURED = (STATUS_OK, STATUS_CONTENDED)
OLYMPIC_METHOD = ("olympic (MLPerf Training): each seed's wall time from its first step to "
                  "the evaluation that first met the target, evaluations on the clock; the "
                  "fastest and the slowest run dropped, mean of the rest; a run that did not "
                  "converge counts as the slowest, two make the case not_converged")


def _pooled_timing(timings: list[TimingResult]) -> TimingResult:
    trials = [trial for t in timings for trial in t.trial_samples_s]
    means = [sum(trial) / len(trial) for trial in trials]
    # Equal weight per process: a noisy process misses the CI target and runs to
    # max_trials, so pooling every trial would pull the median toward the worst process.
    # The statistic uses each process's first n trials, n the fewest any process ran;
    # every trial stays in the raw samples.
    n = min(len(t.trial_samples_s) for t in timings)
    balanced = [sum(trial) / len(trial) for t in timings for trial in t.trial_samples_s[:n]]
    s = summarize(balanced)
    first = timings[0]
    colds = sorted(t.cold_start_s for t in timings)
    return dataclasses.replace(
        first,
        cold_start_s=colds[len(colds) // 2],
        warmup_iterations=sum(t.warmup_iterations for t in timings),
        warmup_steady=all(t.warmup_steady for t in timings),
        warmup_s=sum(t.warmup_s for t in timings),
        trial_samples_s=trials,
        trial_means_s=means,
        **TimingResult.summary_fields(s),
        latency_trial_samples_s=[trial for t in timings for trial in t.latency_trial_samples_s],
        latency_s=percentiles([d for t in timings for d in t.latency_samples()]),
        stop_reason=",".join(sorted({t.stop_reason for t in timings})),
        statistic=(f"median of the trial's mean seconds per step over the first {n} trials "
                   f"of each of {len(timings)} worker processes (equal weight per process); "
                   "cold start: median over processes"),
    )


def merge_process_results(results: list[CaseResult]) -> CaseResult:
    """One record from N runs of the same case. Any failed run makes the case fail with
    that run's status; figures pool the raw trials of every measured process (a contended
    one too: the pooled case is then contended, with that process's reason); memory takes
    the worst process."""
    failed = next((r for r in results if r.status not in _MEASURED), None)
    if failed is not None:
        if failed.budget.get("processes", 1) > 1:
            failed.details["processes_completed"] = sum(r.status in _MEASURED
                                                        for r in results)
        return failed
    if len(results) == 1:
        return results[0]
    first = results[0]
    timing = _pooled_timing([r.timing for r in results])
    throughput = ThroughputResult.from_timing(timing, first.throughput.samples_per_step,
                                              first.throughput.unit)
    memory = max((r.memory for r in results if r.memory),
                 key=lambda m: m.peak_rss_mib, default=None)
    warnings = list(dict.fromkeys(w for r in results for w in r.warnings))
    if timing.cv > first.budget.get("cv_warning", 0.1):
        warnings.insert(0, f"unstable: CV of trial means over {len(results)} processes is "
                           f"{timing.cv:.1%}")
    details = dict(first.details)
    details["trials_per_process"] = [len(r.timing.trial_samples_s) for r in results]
    details["process_pids"] = [r.worker.get("pid") for r in results]
    contended = next((r for r in results if r.status == STATUS_CONTENDED), None)
    status, reason = (contended.status, contended.reason) if contended else (first.status,
                                                                              first.reason)
    return dataclasses.replace(
        first, status=status, reason=reason, timing=timing, throughput=throughput,
        memory=memory, warnings=warnings, details=details,
        rounds=RoundsResult([r.timing.median_s for r in results]),
        duration_s=sum(r.duration_s or 0 for r in results),
        finished_at=results[-1].finished_at)


def _olympic_of(runs: list, attr: str) -> float | None:
    values = [getattr(r, attr) if r.converged else float("inf") for r in runs]
    return olympic([float(v) for v in values])


def merge_seed_runs(results: list[CaseResult]) -> CaseResult:
    """One time-to-accuracy record from one worker per seed: the seeds' runs side by side,
    the olympic scores, the per-step timing pooled as processes are; metrics are the
    median over seeds of each final metric. Two runs short of the target: not_converged."""
    failed = next((r for r in results if r.status not in _RUN_STATUSES), None)
    if failed is not None:
        failed.details["seeds_completed"] = sum(r.status in _RUN_STATUSES for r in results)
        return failed
    runs = [r.time_to_accuracy.runs[0] for r in results]
    first = results[0]
    pooled = merge_process_results([dataclasses.replace(r, status=STATUS_OK) for r in results])
    tta = dataclasses.replace(
        first.time_to_accuracy, runs=runs, converged=sum(r.converged for r in runs),
        score_s=_olympic_of(runs, "time_to_target_s"),
        score_samples=_olympic_of(runs, "samples_to_target"),
        score_steps=_olympic_of(runs, "steps_to_target"),
        score_epochs=_olympic_of(runs, "epochs_to_target"), method=OLYMPIC_METHOD)
    metrics = {k: statistics.median(r.accuracy.metrics[k] for r in results)
               for k in first.accuracy.metrics}
    accuracy = dataclasses.replace(first.accuracy, metrics=metrics)
    status, reason = STATUS_OK, None
    if any(r.status == STATUS_CONTENDED for r in results):
        status, reason = STATUS_CONTENDED, next(r.reason for r in results
                                                if r.status == STATUS_CONTENDED)
    missed = [r for r in runs if not r.converged]
    if tta.settings.get("target_metric") and len(missed) >= 2:
        status = STATUS_NOT_CONVERGED
        reason = (f"{len(missed)} of {len(runs)} seeds did not reach {tta.target} "
                  f"(stopped by {', '.join(sorted({r.stop_reason for r in missed}))})")
    reports = [r.classes for r in results if r.classes is not None]
    classes = pooled_classes(reports) if len(reports) == len(results) else first.classes
    return dataclasses.replace(pooled, status=status, reason=reason, time_to_accuracy=tta,
                               accuracy=accuracy, classes=classes)
