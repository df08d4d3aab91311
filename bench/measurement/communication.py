"""Exposed communication: what a step spends on communication the compute does not hide.

DDP and FSDP2 expose their gradient communication as the step minus the same step with
gradient sync off, measured in paired rounds (``paired_difference``: interleaved blocks of
each, so the host's drift cancels; it has a confidence interval). Tensor parallelism
communicates inside forward and backward (the row-wise layers' partial sums all-reduced), so
there is no step without it; instead a few steps after timing are profiled and the rank's
own thread's time inside the communication ops is summed: the c10d ops it calls
(``c10d::allreduce_``, ``c10d::send``...) and the functional collectives'
``_c10d_functional::wait_tensor``, where DTensor's all-reduces block until the result is
there. Self CPU time, so nested ops count once; the gloo worker threads' ``gloo:*`` events
(the transfer itself, overlapping the wait) are not the rank's time. On a CPU, gloo's
collectives block the rank for their whole duration, so this is the communication the step
exposes (with any wait for a slower rank). With NCCL the wait is a stream dependency, not
host time: the kernel timeline would be needed, so CUDA is not measured here. The profiled
steps run slower than the timed ones (the profiler's own cost), so the figure is the blocked
share of the profiled steps applied to the timed median.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Steps profiled after timing.
PROFILED_STEPS = 5

METHOD = (f"tp: the share of {PROFILED_STEPS} profiled steps (torch.profiler, after timing) "
          "rank 0 spent blocked in communication (self CPU time of c10d ops and "
          "_c10d_functional::wait_tensor), times the median step; CPU (gloo) only")


def is_communication(name: str) -> bool:
    """Whether a profiler event is the rank's own thread blocked in communication."""
    return name.startswith("c10d::") or name == "_c10d_functional::wait_tensor"


def blocked_seconds(events: Iterable[Any]) -> float:
    """Seconds of self CPU time in the communication ops among ``events``
    (``profile.key_averages()`` rows: ``key``, ``self_cpu_time_total`` in microseconds)."""
    return sum(e.self_cpu_time_total for e in events if is_communication(e.key)) / 1e6


def blocked_share(step: Callable[[], object], steps: int = PROFILED_STEPS) -> float:
    """The share of ``steps`` profiled calls of ``step`` spent blocked in communication.
    Every rank must call it together (the steps take collectives)."""
    from torch.profiler import ProfilerActivity, profile  # only cases that need it

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - began
    return min(1.0, blocked_seconds(prof.key_averages()) / wall) if wall > 0 else 0.0


# Paired rounds of the step with and without its gradient sync (ddp, fsdp2, fsdp2_tp).
PAIRED_ROUNDS = 6


@dataclass(frozen=True)
class PairedDifference:
    """The step's time with its gradient sync minus without, from interleaved blocks."""

    mean_s: float  # exposed communication per step
    ci_s: tuple[float, float]  # its Student-t 95% interval over the rounds
    without_s: float  # the mean step without the sync
    rounds: int


def paired_difference(synced: Callable[[], object], unsynced: Callable[[], object],
                      time_block: Callable[[Callable[[], object], int], float], steps: int,
                      rounds: int = PAIRED_ROUNDS) -> PairedDifference:
    """``rounds`` rounds of one block of ``steps`` steps each way, in ABBA order (round r
    runs synced first when r is even), each block's seconds per step from ``time_block``:
    the per-round differences, so that drift in the host's speed cancels instead of
    landing on one side (two separately sampled medians read negative under noise)."""
    from scipy.stats import t as student_t  # only cases that need it

    differences, without = [], []
    for r in range(rounds):
        order = (synced, unsynced) if r % 2 == 0 else (unsynced, synced)
        seconds = {id(fn): time_block(fn, steps) / steps for fn in order}
        differences.append(seconds[id(synced)] - seconds[id(unsynced)])
        without.append(seconds[id(unsynced)])
    mean = statistics.fmean(differences)
    half = student_t.ppf(0.975, rounds - 1) * statistics.stdev(differences) / math.sqrt(rounds)
    return PairedDifference(mean, (mean - half, mean + half), statistics.fmean(without), rounds)
