"""The measured pipeline bubble (bench.variants.parallel): a stage's idle share of each
schedule run, from the time of its forward and backward chunks, on a scripted clock."""

from __future__ import annotations

import pytest

from bench.variants import parallel


def test_a_stages_bubble_is_the_schedules_time_outside_its_chunks(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(parallel.time, "perf_counter", lambda: now[0])
    clock = parallel._SpanClock("cpu")

    def chunk(seconds: float) -> None:
        now[0] += seconds

    forward, backward = clock.timed(chunk), clock.timed(chunk)

    def schedule(waits: float) -> None:  # two micro-batches, waiting on the other stage
        for _ in range(2):
            forward(0.1)
            now[0] += waits
            backward(0.2)

    run = clock.timed(schedule, whole=True)
    run(0.0)
    run(0.3)
    assert clock.spans() == [pytest.approx((0.6, 0.6)), pytest.approx((0.6, 1.2))]
    pipeline = object.__new__(parallel.Pipeline)  # only its clock is read
    pipeline.clock = clock
    assert pipeline.bubbles() == [pytest.approx(0.0), pytest.approx(0.5)]
