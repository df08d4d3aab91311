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


def test_paired_rounds_cancel_the_hosts_drift():
    """A host slowing down by 0.5 ms per block throughout: blocks in ABBA order recover the
    3 ms the sync costs exactly, where all synced blocks first and the unsynced ones after
    (two separate samplings) would read none of it."""
    from bench.measurement.communication import paired_difference

    calls = []

    def synced() -> None: ...

    def unsynced() -> None: ...

    def time_block(step, steps: int) -> float:
        drift = 0.0005 * len(calls)
        calls.append(step)
        return steps * ((0.010 if step is synced else 0.007) + drift)

    paired = paired_difference(synced, unsynced, time_block, steps=4, rounds=6)
    assert paired.mean_s == pytest.approx(0.003, abs=1e-12)
    assert paired.ci_s[0] <= paired.mean_s <= paired.ci_s[1] and paired.rounds == 6
    assert calls[:4] == [synced, unsynced, unsynced, synced]
    separate = (sum(0.010 + 0.0005 * i for i in range(6)) / 6
                - sum(0.007 + 0.0005 * i for i in range(6, 12)) / 6)
    assert separate == pytest.approx(0.0)  # the separate samplings: the cost hidden
