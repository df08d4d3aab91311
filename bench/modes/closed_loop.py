"""Closed loop: the engine's sampler times back-to-back steps (bench.measurement.sampler),
then the phase's task metrics and FLOP count. The default mode of every case."""

from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING, Any

from bench.measurement import baton as baton_module
from bench.measurement.baton import BatonTimer
from bench.measurement.sampler import measure
from bench.measurement.timers import timer_for
from bench.modes import register
from bench.modes.base import TimedMode
from bench.modes.record import (
    record_outcome,
    record_timing,
    sampled_timing,
    with_injected_slowdown,
)
from bench.workloads.base import Outcome

if TYPE_CHECKING:
    from bench.modes.trackers import Trackers
    from bench.results.schema import CaseResult
    from bench.spec.model import CaseSpec


@register
class ClosedLoop(TimedMode):
    name = "closed_loop"
    description = "back-to-back steps timed by the engine's sampler (warm-up, trials)"
    order = 90  # last: it claims every case
    takes_baton = True

    @classmethod
    def claims(cls, case: CaseSpec) -> bool:
        return True

    def timed(self, case: CaseSpec, phase: Any, result: CaseResult,
              trackers: Trackers) -> int | None:
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step = with_injected_slowdown(phase.step, result)
        timer, clock = timer_for(case.device), time.perf_counter
        baton = baton_module.current()
        if baton is not None:  # a lockstep A/B round: time only in this worker's turns
            timer, clock = BatonTimer(timer, baton), baton.held_clock
            baton.listeners.append(trackers.interference.on_turn)
        with phase.session():
            measurement = measure(step, timer, case.budget, clock)
        if baton is not None:
            baton.listeners.remove(trackers.interference.on_turn)
            result.details["baton"] = baton.figures()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
        steps = measurement.steps_run
        # Fresh pages the allocator had to fault in: a step that allocates from recycled
        # heap memory is faster than one that maps new pages (see measurement.allocator).
        result.details["minor_page_faults_per_step"] = faults / steps
        result.warnings.extend(measurement.warnings)
        record_timing(result, sampled_timing(measurement, phase.step_description),
                      phase.samples_per_step, phase.sample_unit)
        return steps * phase.samples_per_step

    def finish(self, case: CaseSpec, phase: Any, result: CaseResult) -> None:
        if case.probe:  # a max-batch probe times the step and stops
            record_outcome(case, Outcome(metrics={}), result)
            return
        outcome = phase.finish()
        # After timing: counting runs one more step, the measured peak a large matmul.
        record_outcome(case, outcome, result, phase.flop_count())
