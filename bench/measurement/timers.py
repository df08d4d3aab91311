"""One timing path for every backend.

A timer runs a step ``n`` times and returns either each iteration's duration
(``time_iterations``) or the block's total (``time_block``), in seconds. On CPU the host
clock is exact (the work is synchronous) and costs ~50 ns a reading, so one pass gives
both. On CUDA the host clock is never read around device work: iterations are bracketed
by CUDA events, read after one synchronize at the end of the block. Recording an event
is a host call (~2-5 us) on the step's own launch path, so a launch-bound step timed
with an event pair per iteration reads 10-20% slow; ``per_iteration_costs_host_time``
tells the sampler to take throughput from one event pair around each block and
per-iteration events only in separate latency trials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import torch

Step = Callable[[], object]


class Timer(Protocol):
    name: str
    description: str
    # True where timing each iteration adds host work to the step itself (CUDA events).
    per_iteration_costs_host_time: bool

    def time_iterations(self, step: Step, iterations: int) -> list[float]: ...

    def time_block(self, step: Step, iterations: int) -> float: ...


class PerfCounterTimer:
    name = "perf_counter_ns"
    description = "time.perf_counter_ns around each iteration (CPU work is synchronous)"
    per_iteration_costs_host_time = False

    def time_iterations(self, step: Step, iterations: int) -> list[float]:
        clock = time.perf_counter_ns
        durations = [0.0] * iterations
        for i in range(iterations):
            start = clock()
            step()
            durations[i] = (clock() - start) * 1e-9
        return durations

    def time_block(self, step: Step, iterations: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(iterations):
            step()
        return (time.perf_counter_ns() - start) * 1e-9


class CudaEventTimer:
    name = "cuda_event"
    description = ("torch.cuda.Event(enable_timing=True) on the current stream: throughput "
                   "trials from one event pair around each block of iterations, latency "
                   "percentiles from an event pair per iteration in separate trials; read "
                   "after one synchronize per block")
    per_iteration_costs_host_time = True

    def __init__(self) -> None:
        self._torch = torch

    def time_iterations(self, step: Step, iterations: int) -> list[float]:
        cuda = self._torch.cuda
        starts = [cuda.Event(enable_timing=True) for _ in range(iterations)]
        ends = [cuda.Event(enable_timing=True) for _ in range(iterations)]
        cuda.synchronize()
        for i in range(iterations):
            starts[i].record()
            step()
            ends[i].record()
        ends[-1].synchronize()
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)]

    def time_block(self, step: Step, iterations: int) -> float:
        cuda = self._torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        cuda.synchronize()
        start.record()
        for _ in range(iterations):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3


def timer_for(device: str) -> Timer:
    return CudaEventTimer() if device == "cuda" else PerfCounterTimer()
