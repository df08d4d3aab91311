"""Served: a LoadGen scenario (single_stream, multi_stream, server, offline) against the
phase's serving entry (bench.measurement.serving), then the task metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.measurement.serving import serve_scenario
from bench.modes import register
from bench.modes.base import TimedMode
from bench.modes.record import record_outcome
from bench.spec.model import CLOSED_LOOP, ServingSpec
from bench.workloads.base import Outcome

if TYPE_CHECKING:
    from bench.modes.trackers import Trackers
    from bench.results.schema import CaseResult
    from bench.spec.model import CaseSpec


@register
class Served(TimedMode):
    name = "served"
    description = "a LoadGen scenario (the scenario axis other than closed_loop)"
    order = 40

    @classmethod
    def claims(cls, case: CaseSpec) -> bool:
        return case.scenario != CLOSED_LOOP

    def timed(self, case: CaseSpec, phase: Any, result: CaseResult,
              trackers: Trackers) -> int | None:
        with phase.session():
            result.serving = serve_scenario(case.scenario, phase,
                                            case.serving or ServingSpec(),
                                            case.batch_size or 1, case.device)
        return None

    def finish(self, case: CaseSpec, phase: Any, result: CaseResult) -> None:
        # The headline LoadGen run's energy (its samples), not the whole region's, which
        # includes the warm-up, the service-time estimates and any capacity probes.
        result.energy = result.serving.headline_run.energy
        record_outcome(case, Outcome(metrics={}) if case.probe else phase.finish(), result)
