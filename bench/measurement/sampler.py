"""The adaptive sampler: cold start, warm-up until steady, independent trials.

1. Cold start: the first iteration, timed alone (lazy init, allocator growth, later
   compilation) and reported apart from the steady state.
2. Warm-up: blocks of iterations until two consecutive block medians agree within
   ``warmup_tolerance``, or ``warmup_max_s`` passes.
3. Trials: blocks of ``iters_per_trial`` iterations (sized so a trial lasts about
   ``trial_time_s``); a trial's value is its mean seconds per iteration. Trials go on
   until the CI half-width reaches ``target_rel_ci`` (after ``min_trials``), or
   ``max_trials`` / ``max_time_s`` runs out. The host clock here only enforces the
   budget; every figure comes from the timer.
4. Latency: where timing each iteration costs the step host time (CUDA events), the
   trials above time each block as a whole (one sample per trial: its mean) and
   ``min_trials`` more trials time every iteration for the latency percentiles alone;
   elsewhere the trials' own per-iteration samples give the percentiles.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

from bench.measurement.stats import Summary, percentiles, summarize
from bench.measurement.timers import Step, Timer
from bench.results.schema import TRIAL_BLOCK, TRIAL_PER_ITERATION
from bench.spec.model import Budget


@dataclass
class Measurement:
    timer: str
    timer_description: str
    cold_start_s: float
    warmup_iterations: int
    warmup_steady: bool
    warmup_s: float
    iters_per_trial: int
    trials: list[list[float]]
    trial_means_s: list[float]
    summary: Summary
    latency_percentiles_s: dict[str, float]
    stop_reason: str
    warnings: list[str] = field(default_factory=list)
    trial_timing: str = TRIAL_PER_ITERATION
    # Per-iteration samples timed apart from the throughput trials (block-timed trials).
    latency_trials: list[list[float]] = field(default_factory=list)

    @property
    def steps_run(self) -> int:
        """Every step the sampler ran: cold start, warm-up, trials, latency trials."""
        timed = self.iters_per_trial * len(self.trials) if self.trial_timing == TRIAL_BLOCK \
            else sum(len(t) for t in self.trials)
        return 1 + self.warmup_iterations + timed + sum(len(t) for t in self.latency_trials)


def _warm_up(step: Step, timer: Timer, budget: Budget, first_estimate: float,
             clock=time.perf_counter) -> tuple[int, bool, float, float]:
    """Return (iterations run, reached steady state, seconds spent, steady step estimate)."""
    started = clock()
    block = budget.warmup_min_iters
    previous: float | None = None
    estimate = first_estimate
    iterations = 0
    while True:
        durations = timer.time_iterations(step, block)
        iterations += block
        estimate = statistics.median(durations)
        steady = previous is not None and abs(estimate - previous) <= (
            budget.warmup_tolerance * previous)
        if steady or clock() - started >= budget.warmup_max_s:
            return iterations, steady, clock() - started, estimate
        previous = estimate
        # Size the next block to a quarter trial so tiny steps are not judged on noise.
        block = max(budget.warmup_min_iters,
                    math.ceil(budget.trial_time_s / 4 / max(estimate, 1e-9)))


def measure(step: Step, timer: Timer, budget: Budget, clock=time.perf_counter) -> Measurement:
    cold = timer.time_iterations(step, 1)[0]
    warm_iters, steady, warm_s, estimate = _warm_up(step, timer, budget, cold, clock)
    iters_per_trial = max(1, math.ceil(budget.trial_time_s / max(estimate, 1e-9)))

    block_timed = timer.per_iteration_costs_host_time
    started = clock()
    trials: list[list[float]] = []
    means: list[float] = []
    stop_reason = ""
    summary: Summary | None = None
    while not stop_reason:
        if block_timed:
            trial = [timer.time_block(step, iters_per_trial) / iters_per_trial]
        else:
            trial = timer.time_iterations(step, iters_per_trial)
        trials.append(trial)
        means.append(sum(trial) / len(trial))
        if len(trials) < budget.min_trials:
            continue
        summary = summarize(means)
        if summary.rel_half_width <= budget.target_rel_ci:
            stop_reason = "ci_target"
        elif len(trials) >= budget.max_trials:
            stop_reason = "max_trials"
        elif clock() - started >= budget.max_time_s:
            stop_reason = "max_time"
    assert summary is not None
    latency_trials = [timer.time_iterations(step, iters_per_trial)
                      for _ in range(budget.min_trials if block_timed else 0)]

    warnings = []
    if summary.cv > budget.cv_warning:
        warnings.append(f"unstable: CV of trial means is {summary.cv:.1%} "
                        f"(> {budget.cv_warning:.0%}); the machine may be busy")
    if stop_reason != "ci_target":
        warnings.append(f"CI half-width {summary.rel_half_width:.1%} of the median did not "
                        f"reach the target {budget.target_rel_ci:.1%} ({stop_reason})")
    if not steady:
        warnings.append(f"warm-up did not settle within {budget.warmup_max_s:g} s "
                        f"({warm_iters} iterations)")
    return Measurement(
        timer=timer.name,
        timer_description=timer.description,
        cold_start_s=cold,
        warmup_iterations=warm_iters,
        warmup_steady=steady,
        warmup_s=warm_s,
        iters_per_trial=iters_per_trial,
        trials=trials,
        trial_means_s=means,
        summary=summary,
        latency_percentiles_s=percentiles([d for t in latency_trials or trials for d in t]),
        stop_reason=stop_reason,
        warnings=warnings,
        trial_timing=TRIAL_BLOCK if block_timed else TRIAL_PER_ITERATION,
        latency_trials=latency_trials,
    )
