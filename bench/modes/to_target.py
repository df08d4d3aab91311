"""Train to target (time to accuracy): one run of the case's seed until its target, its
patience or its budget stops it; the run's own steps are the timed steps, its final
evaluation the task metrics (bench.measurement.training_run)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.measurement.timers import timer_for
from bench.measurement.training_run import run_to_target
from bench.modes import register
from bench.modes.base import TimedMode
from bench.modes.record import (
    record_timing,
    record_training_run,
    training_run_timing,
    with_injected_slowdown,
)
from bench.results.store import json_safe
from bench.workloads import get_workload

if TYPE_CHECKING:
    from bench.modes.trackers import Trackers
    from bench.results.schema import CaseResult
    from bench.spec.model import CaseSpec


def progress_reporter(path: str | None) -> Any:
    """bench tune's view of a run: each evaluation appended to ``path`` as a JSON line;
    False (stop: pruned) once the file ``path.stop`` exists. None without a path."""
    if path is None:
        return None
    stop = Path(path + ".stop")

    def report(point: Any) -> bool:
        with open(path, "a") as out:
            out.write(json.dumps(json_safe(dataclasses.asdict(point))) + "\n")
        return not stop.exists()

    return report


@register
class TrainToTarget(TimedMode):
    name = "train_to_target"
    description = "one seed's training run to a target accuracy ([benchmark.training])"
    order = 30

    @classmethod
    def claims(cls, case: CaseSpec) -> bool:
        return case.training is not None

    def timed(self, case: CaseSpec, phase: Any, result: CaseResult,
              trackers: Trackers) -> int | None:
        metric, _ = get_workload(case.workload).watched_metric(case)
        patience = int(case.axes.get("early_stopping", 0))
        step = with_injected_slowdown(phase.step, result)
        timer = timer_for(case.device)
        with phase.session():
            self.trace = run_to_target(phase, timer, case.training, case.seed, metric,
                                       patience, step=step,
                                       on_eval=progress_reporter(case.progress_file))
        self.trace.run.pid = os.getpid()
        record_timing(result, training_run_timing(self.trace, timer.name, timer.description,
                                                  phase.step_description),
                      phase.samples_per_step, phase.sample_unit)
        return self.trace.run.steps * phase.samples_per_step

    def finish(self, case: CaseSpec, phase: Any, result: CaseResult) -> None:
        outcome = phase.run_outcome(self.trace.run.curve[-1].metrics)
        record_training_run(case, self.trace, outcome, result)
