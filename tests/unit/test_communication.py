"""Exposed communication under tensor parallelism (bench.measurement.communication): which
profiler events are the rank blocked in communication, on scripted events."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.measurement.communication import blocked_seconds, is_communication


def test_only_the_ranks_own_waits_in_communication_ops_count():
    events = [SimpleNamespace(key=k, self_cpu_time_total=us) for k, us in (
        ("_c10d_functional::wait_tensor", 40_000.0),  # DTensor's all-reduce, waited
        ("c10d::allreduce_", 3_000.0),
        ("c10d::send", 1_000.0),
        ("gloo:all_reduce", 55_000.0),  # gloo's worker thread: overlaps the wait
        ("_c10d_functional::all_reduce", 2_000.0),  # issues it (nested c10d op counted)
        ("aten::mm", 10_000.0))]
    assert blocked_seconds(events) == pytest.approx(0.044)
    assert not is_communication("gloo:recv") and is_communication("c10d::broadcast_")
