"""One timing path for every backend.

A timer runs a step ``n`` times and returns each iteration's duration in seconds.
On CPU the host clock is exact (the work is synchronous). On CUDA the host clock
is never read around device work: each iteration is bracketed by CUDA events and
the durations are read after one synchronize at the end of the block.
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

    def time_iterations(self, step: Step, iterations: int) -> list[float]: ...


class PerfCounterTimer:
    name = "perf_counter_ns"
    description = "time.perf_counter_ns around each iteration (CPU work is synchronous)"

    def time_iterations(self, step: Step, iterations: int) -> list[float]:
        clock = time.perf_counter_ns
        durations = [0.0] * iterations
        for i in range(iterations):
            start = clock()
            step()
            durations[i] = (clock() - start) * 1e-9
        return durations


class CudaEventTimer:
    name = "cuda_event"
    description = ("torch.cuda.Event(enable_timing=True) recorded before and after each "
                   "iteration on the current stream; read after one synchronize per block")

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


def timer_for(device: str) -> Timer:
    return CudaEventTimer() if device == "cuda" else PerfCounterTimer()
