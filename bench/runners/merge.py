"""Pool the results of one case run in several independent worker processes."""

from __future__ import annotations

import dataclasses

from bench.measurement.stats import percentiles, summarize
from bench.results.schema import PROCESS_MEDIANS_KEY, CaseResult, ThroughputResult, TimingResult


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
        latency_s=percentiles([d for trial in trials for d in trial]),
        stop_reason=",".join(sorted({t.stop_reason for t in timings})),
        statistic=(f"median of the trial's mean seconds per step over the first {n} trials "
                   f"of each of {len(timings)} worker processes (equal weight per process); "
                   "cold start: median over processes"),
    )


def merge_process_results(results: list[CaseResult]) -> CaseResult:
    """One record from N runs of the same case. Any failed run makes the case fail with
    that run's status; figures pool the raw trials; memory takes the worst process."""
    failed = next((r for r in results if r.status != "ok"), None)
    if failed is not None:
        if failed.budget.get("processes", 1) > 1:
            failed.details["processes_completed"] = sum(r.status == "ok" for r in results)
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
    details[PROCESS_MEDIANS_KEY] = [r.timing.median_s for r in results]
    details["trials_per_process"] = [len(r.timing.trial_samples_s) for r in results]
    details["process_pids"] = [r.worker.get("pid") for r in results]
    return dataclasses.replace(
        first, timing=timing, throughput=throughput, memory=memory, warnings=warnings,
        details=details, duration_s=sum(r.duration_s or 0 for r in results),
        finished_at=results[-1].finished_at)
