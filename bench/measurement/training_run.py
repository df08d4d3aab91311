"""Time-to-accuracy: one training run from initialization until a target, on the clock.

As MLPerf Training times a run (scaled down): the clock starts at the first training step
and stops at the evaluation that first meets the target; evaluations are on the clock. The
run evaluates every ``eval_every`` training samples (rounded up to whole optimizer steps;
0: once per epoch) and stops at the target, at the cap (``max_epochs``, or ``max_time_s``
checked at each evaluation), at a non-finite loss or metric, or by early stopping: after
``patience`` evaluations in a row that did not improve on the best value of the watched
metric (0: never). Every optimizer step of the run is timed by the engine's timer, so the
run's steps are also the case's per-step timing (one trial per interval between
evaluations, the first step apart as the cold start).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.results.schema import EvalPoint, SeedRun
from bench.spec.model import TrainingRunSpec

if TYPE_CHECKING:
    from bench.measurement.timers import Timer
    from bench.workloads.base import EvaluatedTraining

STOP_TARGET = "target"
STOP_MAX_EPOCHS = "max_epochs"
STOP_MAX_TIME = "max_time"
STOP_EARLY = "early_stopping"
STOP_NON_FINITE = "non_finite"
STOP_PRUNED = "pruned"  # a hyperparameter search's pruner stopped the run (bench tune)


@dataclass
class TrainingTrace:
    """A finished run: its record and the raw step durations, in run order."""

    run: SeedRun
    step_durations_s: list[float]
    steps_per_eval: int


@dataclass
class _Best:
    higher_is_better: bool
    value: float | None = None
    steps: int | None = None
    since: int = 0  # evaluations since the best one

    def update(self, value: float | None, steps: int) -> None:
        if value is None or not math.isfinite(value):
            self.since += 1
            return
        better = self.value is None or (value > self.value if self.higher_is_better
                                        else value < self.value)
        if better:
            self.value, self.steps, self.since = value, steps, 0
        else:
            self.since += 1


def steps_per_eval(spec: TrainingRunSpec, samples_per_step: int, steps_per_epoch: int) -> int:
    if spec.eval_every <= 0:
        return max(1, steps_per_epoch)
    return max(1, math.ceil(spec.eval_every / samples_per_step))


def run_to_target(phase: EvaluatedTraining, timer: Timer, spec: TrainingRunSpec, seed: int,
                  metric: str, patience: int = 0, step: Callable[[], object] | None = None,
                  on_eval: Callable[[EvalPoint], bool] | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> TrainingTrace:
    """Train ``phase`` from its initial state until a stop rule fires; see the module.
    ``step`` replaces ``phase.step`` as the timed step (the injected-slowdown test knob);
    ``on_eval`` sees each evaluation and returns False to stop the run (pruned)."""
    step = step or phase.step
    per_step = phase.samples_per_step
    per_epoch = max(1, phase.steps_per_epoch)
    interval = steps_per_eval(spec, per_step, per_epoch)
    max_steps = max(1, math.ceil(spec.max_epochs * per_epoch))
    durations: list[float] = []
    curve: list[EvalPoint] = []
    best = _Best(spec.higher_is_better if spec.target_metric else True)
    eval_s, steps, stop = 0.0, 0, ""
    started = clock()
    while not stop:
        block = min(interval, max_steps - steps)
        durations.extend(timer.time_iterations(step, block))
        steps += block
        eval_started = clock()
        metrics = phase.evaluate()
        loss = phase.mean_train_loss()
        now = clock()
        eval_s += now - eval_started
        curve.append(EvalPoint(steps=steps, samples=steps * per_step, epochs=steps / per_epoch,
                               time_s=now - started, train_loss=loss, metrics=dict(metrics)))
        value = metrics.get(metric)
        best.update(value, steps)
        if not math.isfinite(loss) or (value is not None and not math.isfinite(value)):
            stop = STOP_NON_FINITE
        elif on_eval is not None and not on_eval(curve[-1]):
            stop = STOP_PRUNED
        elif spec.reached(metrics):
            stop = STOP_TARGET
        elif patience and best.since >= patience:
            stop = STOP_EARLY
        elif steps >= max_steps:
            stop = STOP_MAX_EPOCHS
        elif now - started >= spec.max_time_s:
            stop = STOP_MAX_TIME
    return TrainingTrace(_record(curve, durations, stop, seed, metric, best, eval_s, spec,
                                 per_epoch), durations, interval)


def _record(curve: list[EvalPoint], durations: list[float], stop: str, seed: int, metric: str,
            best: _Best, eval_s: float, spec: TrainingRunSpec, per_epoch: int) -> SeedRun:
    last = curve[-1]
    converged = stop == STOP_TARGET
    saved_epochs = max(0.0, spec.max_epochs - last.epochs) if stop == STOP_EARLY else None
    return SeedRun(
        seed=seed, converged=converged, stop_reason=stop, steps=last.steps,
        samples=last.samples, epochs=last.epochs, wall_s=last.time_s, train_s=sum(durations),
        eval_s=eval_s, median_step_s=statistics.median(durations),
        steps_to_target=last.steps if converged else None,
        samples_to_target=last.samples if converged else None,
        epochs_to_target=last.epochs if converged else None,
        time_to_target_s=last.time_s if converged else None,
        best_metric=best.value, best_steps=best.steps,
        final_metric=last.metrics.get(metric),
        epochs_saved=saved_epochs,
        time_saved_s=None if saved_epochs is None else saved_epochs * last.time_s / last.epochs,
        curve=curve)


def trials_of(trace: TrainingTrace) -> tuple[float, list[list[float]]]:
    """(cold start, trials): the first step alone, then the steps of each interval between
    evaluations as one trial (the engine's per-step statistics over the real run)."""
    cold, rest = trace.step_durations_s[0], trace.step_durations_s[1:]
    if not rest:
        return cold, [[cold]]
    n = trace.steps_per_eval
    # The first interval lost its cold step: it holds n - 1 steps.
    first, rest = rest[:n - 1], rest[n - 1:]
    trials = [first] if first else []
    trials += [rest[i:i + n] for i in range(0, len(rest), n)]
    return cold, trials
