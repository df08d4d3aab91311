"""Count instructions: under callgrind, the phase's step counted, nothing timed
(bench.measurement.instructions); the parent adds the count to the record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.measurement.instructions import METHOD, count_steps
from bench.modes import register
from bench.modes.base import Mode, case_memory, prepare_phase
from bench.results.schema import InstructionCount

if TYPE_CHECKING:
    from bench.results.schema import CaseResult
    from bench.spec.model import CaseSpec


@register
class CountInstructions(Mode):
    name = "count_instructions"
    description = "the step's instructions counted under callgrind; nothing timed"
    order = 20

    @classmethod
    def claims(cls, case: CaseSpec) -> bool:
        return case.count_instructions

    def run(self, case: CaseSpec, result: CaseResult) -> None:
        # Nothing is timed, so no trackers: callgrind's slowdown is not contention.
        with case_memory(case, result):
            phase = prepare_phase(case)
            with phase.session():
                result.instructions = InstructionCount(count_steps(phase.step), method=METHOD)
