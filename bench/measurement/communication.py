"""Exposed communication where it cannot be switched off: the share of a rank's steps it
spends blocked in collectives, from torch.profiler.

DDP and FSDP2 expose their gradient communication as the step minus the same step with
gradient sync off (bench.modes.ranks). Tensor parallelism communicates inside forward and
backward (the row-wise layers' partial sums all-reduced), so there is no step without it;
instead a few steps after timing are profiled and the rank's own thread's time inside the
communication ops is summed: the c10d ops it calls (``c10d::allreduce_``, ``c10d::send``...)
and the functional collectives' ``_c10d_functional::wait_tensor``, where DTensor's
all-reduces block until the result is there. Self CPU time, so nested ops count once; the
gloo worker threads' ``gloo:*`` events (the transfer itself, overlapping the wait) are not
the rank's time. On a CPU, gloo's collectives block the rank for their whole duration, so
this is the communication the step exposes (with any wait for a slower rank). With NCCL the
wait is a stream dependency, not host time: the kernel timeline would be needed, so CUDA is
not measured here. The profiled steps run slower than the timed ones (the profiler's own
cost), so the figure is the blocked share of the profiled steps applied to the timed median.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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
