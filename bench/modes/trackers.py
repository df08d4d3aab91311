"""The trackers of a timed region, entered together: interference (did other processes
take the CPU), clocks (did the device throttle) and energy. Every mode's timed region runs
inside them: the worker's (bench.modes.base) and each rank's (bench.modes.ranks), whose
figures the case then combines (``combine_ranks``)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

import psutil

from bench.measurement.clocks import ClockSampler
from bench.measurement.energy import EnergyMeter
from bench.measurement.interference import InterferenceProbe, contention_reason
from bench.results.schema import (
    STATUS_CONTENDED,
    CaseResult,
    ClockResult,
    EnergyResult,
    InterferenceResult,
)

if TYPE_CHECKING:
    from bench.spec.model import CaseSpec


@dataclasses.dataclass
class TrackedFigures:
    """What the trackers saw around one region (picklable: a rank sends it to rank 0)."""

    interference: InterferenceResult | None
    energy: EnergyResult
    clocks: ClockResult
    contention: str | None = None  # why the region was contended, or None


def throttle_warning(clocks: ClockResult) -> str | None:
    return "throttled: " + "; ".join(clocks.throttle_reasons) if clocks.throttled else None


class Trackers:
    """``with Trackers(device, threads, contended_above) as t: <timed region>`` then
    ``t.figures(samples)`` or ``t.record(result, samples)``."""

    def __init__(self, device: str, threads: int, contended_above: float,
                 root: psutil.Process | None = None) -> None:
        self.interference = InterferenceProbe(threads, contended_above, root)
        self.clocks = ClockSampler(device)
        self.energy = EnergyMeter(device)
        self._stack = contextlib.ExitStack()

    @classmethod
    def for_worker(cls, case: CaseSpec, result: CaseResult) -> Trackers:
        return cls(case.device, result.worker["torch_threads"], case.budget.contended_above)

    def __enter__(self) -> Trackers:
        with contextlib.ExitStack() as stack:
            for tracker in (self.interference, self.clocks, self.energy):
                stack.enter_context(tracker)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def figures(self, samples: int | None) -> TrackedFigures:
        seen = self.interference.result
        return TrackedFigures(
            interference=seen, energy=self.energy.result(samples), clocks=self.clocks.result(),
            contention=contention_reason(seen) if seen is not None and seen.contended else None)

    def record(self, result: CaseResult, samples: int | None) -> None:
        record_figures(result, self.figures(samples))


def record_figures(result: CaseResult, figures: TrackedFigures) -> None:
    """Energy, clocks (and the throttled warning) and interference into the record; a
    region timed while other processes used the CPU makes the case contended."""
    result.energy = figures.energy
    result.clocks = figures.clocks
    warning = throttle_warning(figures.clocks)
    if warning:
        result.warnings.append(warning)
    result.interference = figures.interference
    if figures.contention is not None:
        result.status, result.reason = STATUS_CONTENDED, figures.contention


ENERGY_ACROSS_RANKS = ("; across ranks: the sum over every host of each counter once (a "
                       "CPU package is shared by the ranks on it; each GPU is its rank's)")


def _combined_energy(hosts: list[str], energies: list[EnergyResult],
                     samples: int | None) -> EnergyResult:
    unmeasured = [(rank, e) for rank, e in enumerate(energies) if not e.measured]
    lead = energies[0]
    seconds = max(e.seconds for e in energies)
    if unmeasured:
        rank, energy = unmeasured[0]
        return EnergyResult(measured=False, method=lead.method + ENERGY_ACROSS_RANKS,
                            seconds=seconds, samples=samples,
                            reason=f"rank {rank}: {energy.reason}")
    domains: dict[str, float] = {}
    for host, energy in zip(hosts, energies, strict=True):
        for name, joules in (energy.domains or {}).items():
            domains.setdefault(f"{host}/{name}", joules)
    joules = sum(domains.values())
    return EnergyResult(
        measured=True, method=lead.method + ENERGY_ACROSS_RANKS, seconds=seconds,
        joules=joules, samples=samples,
        joules_per_sample=joules / samples if samples else None,
        samples_per_joule=samples / joules if samples and joules > 0 else None,
        mean_watts=joules / seconds if seconds > 0 else None, domains=domains,
        resolution=lead.resolution)


def combine_ranks(hosts: list[str], figures: list[TrackedFigures],
                  samples: int | None) -> TrackedFigures:
    """The case's figures from its ranks' (in rank order): the interference of the rank
    that saw the most, contended when any rank was (the first such rank named), energy
    summed over hosts, rank 0's clocks (throttled when any rank's were)."""
    seen = [(rank, f.interference) for rank, f in enumerate(figures) if f.interference]
    worst = max(seen, key=lambda s: s[1].others_share + s[1].steal_share)[1] if seen else None
    contention = next((f"rank {rank}: {f.contention}" for rank, f in enumerate(figures)
                       if f.contention), None)
    clocks = figures[0].clocks
    throttled = [f"rank {rank}: {reason}" for rank, f in enumerate(figures[1:], start=1)
                 if f.clocks.throttled for reason in f.clocks.throttle_reasons]
    if throttled:
        clocks = dataclasses.replace(clocks, throttled=True,
                                     throttle_reasons=clocks.throttle_reasons + throttled)
    return TrackedFigures(interference=worst,
                          energy=_combined_energy(hosts, [f.energy for f in figures], samples),
                          clocks=clocks, contention=contention)
