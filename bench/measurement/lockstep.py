"""The sampler across ranks: every rank runs the same steps, and every decision the
sampler takes (warm-up settled, steps per trial, CI reached, time up) is taken on the
same numbers everywhere, so no rank stops while another waits in a collective.

A ``LockstepTimer`` times a block of steps on each rank with the case's timer, then
all-reduces the per-step durations (or the block's total, for block-timed trials) with MAX
(after the block, outside the timed steps): a step of the case lasts as long as its slowest
rank. ``collective_clock`` is the latest
rank's clock. ``bench.measurement.sampler.measure`` is then used unchanged.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from bench.measurement.timers import Step, Timer


def _all_reduce_max(values: list[float], group: Any) -> list[float]:
    import torch.distributed as dist  # kept out of start-up

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


class LockstepTimer:
    """``inner`` on every rank; each block's durations the maximum over ranks. Each rank's
    own durations are kept in ``local`` (one list per block) for the straggler figures."""

    def __init__(self, inner: Timer, group: Any = None) -> None:
        self.inner, self.group = inner, group
        self.name = inner.name
        self.per_iteration_costs_host_time = inner.per_iteration_costs_host_time
        self.description = (f"{inner.description}; each step the slowest rank's duration "
                            "(all-reduce MAX after each block of steps, outside the timing)")
        self.local: list[list[float]] = []

    def time_iterations(self, step: Step, iterations: int) -> list[float]:
        own = self.inner.time_iterations(step, iterations)
        self.local.append(own)
        return _all_reduce_max(own, self.group)

    def time_block(self, step: Step, iterations: int) -> float:
        own = self.inner.time_block(step, iterations)
        self.local.append([own / iterations])
        return _all_reduce_max([own], self.group)[0]


def collective_clock(group: Any = None) -> Any:
    """A clock every rank reads the same value of: the latest rank's ``perf_counter``."""
    return lambda: _all_reduce_max([time.perf_counter()], group)[0]


def straggler_figures(per_rank_steps: list[list[float]]) -> dict[str, float]:
    """How unevenly the ranks stepped, from each rank's durations of the same steps:
    the median over steps of (slowest - fastest) / slowest, and each rank's median."""
    steps = list(zip(*per_rank_steps, strict=True))
    spreads = [(max(s) - min(s)) / max(s) for s in steps if max(s) > 0]
    return {"median_spread": statistics.median(spreads) if spreads else 0.0,
            "max_spread": max(spreads) if spreads else 0.0}


class LockstepPhase:
    """An evaluated training phase as its ranks run it to a target together: samples per
    step over all ranks, the training loss averaged over ranks, and rank 0's evaluation
    for every rank (replicas agree anyway; Hogwild workers evaluate a model that moves
    under them), so every rank takes the same stop decision."""

    def __init__(self, phase: Any, world_size: int, group: Any = None) -> None:
        self.phase, self.world_size, self.group = phase, world_size, group
        self.samples_per_step = phase.samples_per_step * world_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.phase, name)

    def evaluate(self) -> dict[str, float]:
        import torch.distributed as dist  # kept out of start-up

        shared = [self.phase.evaluate()]
        dist.broadcast_object_list(shared, src=0, group=self.group)
        return shared[0]

    def mean_train_loss(self) -> float:
        import torch.distributed as dist  # kept out of start-up

        t = torch.tensor([self.phase.mean_train_loss()], dtype=torch.float64)
        dist.all_reduce(t, group=self.group)
        return float(t[0]) / self.world_size
