"""The mode interface: one way of running a case inside its worker.

``Mode.run`` fills the case's record. Most modes time one region of a workload's phase,
and ``TimedMode.run`` is that shape; the trackers live in it, so a mode built on it
cannot forget one:

    memory tracked over the whole case
        phase = the workload's phase, prepared
        interference, clocks and energy (bench.modes.trackers) around
            timed(case, phase, result, trackers)   -> samples processed, for energy
        their figures into the record
        finish(case, phase, result)               (task metrics, FLOPs, divergence)

A mode that runs elsewhere (its ranks in processes of their own, bench.modes.ranks) enters
the same trackers around each of its timed regions; one that times nothing (an
instruction count) enters none.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from bench.measurement.memory import MemoryTracker
from bench.modes.trackers import Trackers
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import RunContext

if TYPE_CHECKING:
    from bench.results.schema import CaseResult
    from bench.spec.model import CaseSpec


@contextlib.contextmanager
def case_memory(case: CaseSpec, result: CaseResult) -> Iterator[None]:
    """Memory tracked over the block; its report recorded even when the block raises."""
    memory = MemoryTracker(case.device)
    try:
        with memory:
            yield
    finally:
        if memory.report is not None:
            result.memory = memory.report


def prepare_phase(case: CaseSpec) -> Any:
    """The workload's phase for this case."""
    precision = get_precision(case.precision)
    ctx = RunContext(device=case.device, precision=precision, seed=case.seed)
    return get_workload(case.workload).prepare(case, ctx)


class Mode(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    # Which built-in mode claims a case first (lowest first); a mode that claims no case
    # of its own (the default) runs only where a suite names it.
    order: ClassVar[int] = 100
    # Whether its timed region takes turns with another worker's (a lockstep A/B round,
    # bench.measurement.baton): only the sampler's closed loop does.
    takes_baton: ClassVar[bool] = False

    @classmethod
    def claims(cls, case: CaseSpec) -> bool:
        return False

    @classmethod
    def refuses(cls, case: CaseSpec) -> str | None:
        """Why this mode cannot run ``case`` when a suite names it, or None. A mode that
        claims cases by their shape runs only those; one that claims none runs any."""
        if "claims" in vars(cls) and not cls.claims(case):
            return f"mode {cls.name} does not run this case: it runs {cls.description}"
        return None

    @abstractmethod
    def run(self, case: CaseSpec, result: CaseResult) -> None:
        """Run the case and fill its record (an exception becomes the case's status)."""


class TimedMode(Mode):
    """A mode that times one region of the workload's phase, inside the trackers."""

    def run(self, case: CaseSpec, result: CaseResult) -> None:
        with case_memory(case, result):
            phase = prepare_phase(case)
            with Trackers.for_worker(case, result) as trackers:
                samples = self.timed(case, phase, result, trackers)
            trackers.record(result, samples)
            self.finish(case, phase, result)

    @abstractmethod
    def timed(self, case: CaseSpec, phase: Any, result: CaseResult,
              trackers: Trackers) -> int | None:
        """The timed region (inside the trackers): its figures into ``result``; returns
        the samples it processed (energy per sample), or None."""

    def finish(self, case: CaseSpec, phase: Any, result: CaseResult) -> None:
        """After the timed region, outside the trackers: nothing by default."""
