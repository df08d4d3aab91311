"""The timing path: a known sleep is measured right; the sampler stops as specified."""

from __future__ import annotations

import itertools
import time

import pytest

from bench.measurement.memory import MemoryTracker
from bench.measurement.sampler import measure
from bench.measurement.timers import PerfCounterTimer
from bench.spec.model import Budget

FAST = Budget(min_trials=5, max_trials=12, max_time_s=2.0, trial_time_s=0.05,
              warmup_max_s=0.5)


class ScriptedTimer:
    """A timer replaying given per-iteration durations, to test the sampler's logic."""

    name = "scripted"
    description = "replays durations"
    per_iteration_costs_host_time = False

    def __init__(self, durations):
        self._durations = iter(durations)
        self.calls = 0

    def time_iterations(self, step, iterations):
        self.calls += iterations
        return [next(self._durations) for _ in range(iterations)]

    def time_block(self, step, iterations):
        return sum(self.time_iterations(step, iterations))


class EventLikeTimer:
    """As CUDA events behave on a launch-bound step: a per-iteration event pair adds
    ``overhead`` to every step it times; one pair around a block adds nothing."""

    name = "event_like"
    description = "per-iteration timing costs the step host time"
    per_iteration_costs_host_time = True

    def __init__(self, step_s, overhead):
        self.step_s, self.overhead = step_s, overhead
        self.per_iteration_calls = self.block_calls = 0

    def time_iterations(self, step, iterations):
        self.per_iteration_calls += iterations
        for _ in range(iterations):
            step()
        return [self.step_s + self.overhead] * iterations

    def time_block(self, step, iterations):
        self.block_calls += iterations
        for _ in range(iterations):
            step()
        return self.step_s * iterations


def test_a_known_step_time_is_measured_exactly_on_a_clock_only_the_step_advances(monkeypatch):
    # Precision, deterministic: the timing path's arithmetic on an injected clock (a real
    # sleep on a shared host overshoots by whatever the scheduler adds).
    now_ns = [0]
    monkeypatch.setattr(time, "perf_counter_ns", lambda: now_ns[0])
    monkeypatch.setattr(time, "perf_counter", lambda: now_ns[0] * 1e-9)

    def step():
        now_ns[0] += 20_000_000

    m = measure(step, PerfCounterTimer(), FAST)
    assert m.summary.median == pytest.approx(0.020, rel=1e-12)
    assert m.summary.ci_low == pytest.approx(0.020) == m.summary.ci_high
    assert all(d == pytest.approx(0.020, rel=1e-12) for t in m.trials for d in t)
    assert len(m.trials) == len(m.trial_means_s) >= FAST.min_trials


def test_a_known_sleep_reads_at_least_the_sleep_within_sanity_bounds():
    # The real clock end to end: never under the sleep; over it by whatever a busy host adds
    # to a wake-up (sanity bound: twice the sleep plus 5 ms).
    sleep_s = 0.020
    m = measure(lambda: time.sleep(sleep_s), PerfCounterTimer(), FAST)
    assert sleep_s <= m.summary.median <= 2 * sleep_s + 0.005
    assert m.summary.ci_low <= m.summary.median <= m.summary.ci_high
    assert len(m.trials) == len(m.trial_means_s) >= FAST.min_trials
    assert all(len(t) == m.iters_per_trial for t in m.trials)


def test_cold_start_reported_apart_from_steady_state():
    calls = itertools.count()

    def step():
        time.sleep(0.05 if next(calls) == 0 else 0.002)

    m = measure(step, PerfCounterTimer(), FAST)
    assert m.cold_start_s >= 0.05
    assert 0.002 <= m.summary.median <= 2 * 0.002 + 0.005  # a sanity bound: load wakes late
    assert max(max(t) for t in m.trials) < 0.05


def test_stops_at_ci_target_after_min_trials():
    timer = ScriptedTimer(itertools.repeat(0.001))
    budget = Budget(min_trials=4, max_trials=50, trial_time_s=0.01, warmup_min_iters=2)
    m = measure(lambda: None, timer, budget)
    assert m.stop_reason == "ci_target"
    assert len(m.trials) == 4
    assert m.warmup_steady and m.iters_per_trial == 10
    assert m.summary.median == pytest.approx(0.001) and m.summary.cv == 0.0
    assert m.warnings == []


def test_noisy_timings_run_to_max_trials_and_warn():
    noisy = itertools.cycle([0.001, 0.003, 0.0005, 0.004, 0.002])
    timer = ScriptedTimer(noisy)
    budget = Budget(min_trials=3, max_trials=7, trial_time_s=0.001, warmup_min_iters=1,
                    target_rel_ci=0.001, max_time_s=100, warmup_max_s=0.0)
    m = measure(lambda: None, timer, budget)
    assert m.stop_reason == "max_trials" and len(m.trials) == 7
    assert any("did not reach the target" in w for w in m.warnings)
    assert any(w.startswith("unstable") for w in m.warnings)


def test_warmup_waits_for_steady_state():
    # 0.010 s per step falling to 0.001 s: warm-up must run until two blocks agree.
    durations = itertools.chain([0.02], [0.010] * 3, [0.005] * 3, [0.001] * 1000,
                                itertools.repeat(0.001))
    timer = ScriptedTimer(durations)
    budget = Budget(min_trials=3, trial_time_s=0.003, warmup_min_iters=3, warmup_max_s=60)
    m = measure(lambda: None, timer, budget)
    assert m.cold_start_s == 0.02
    assert m.warmup_steady and m.warmup_iterations >= 9
    assert m.summary.median == pytest.approx(0.001)


def test_memory_tracker_sees_an_allocation():
    with MemoryTracker("cpu", interval=0.002) as tracker:
        block = bytearray(200 * 2**20)
        time.sleep(0.05)
        del block
    report = tracker.report
    assert report.peak_rss_mib - report.baseline_rss_mib >= 190
    assert report.rss_high_water_mib >= report.peak_rss_mib * 0.99
    assert report.cuda_peak_allocated_mib is None


def test_the_memory_tracker_wakes_at_most_ten_times_a_second(monkeypatch):
    """Each sample takes the GIL from the timed code: at 20 ms the tracker cost a
    Python-heavy decode step 1.5-2.6%, so it samples every 100 ms (and at both ends)."""
    clock = itertools.count()
    monkeypatch.setattr(MemoryTracker, "_sample",
                        lambda self: setattr(self, "_samples", next(clock)))
    with MemoryTracker("cpu") as tracker:
        time.sleep(0.55)
    assert 2 <= tracker.report.samples <= 8  # the two ends and 5 wake-ups, not 27
    assert tracker.report.sample_interval_s == 0.1


def test_allocator_policies_set_and_clear_glibc_tunables():
    from bench.measurement.allocator import STEADY_ENV, worker_env

    base = {"PATH": "/bin", "MALLOC_TRIM_THRESHOLD_": "1"}
    steady = worker_env("steady", base)
    assert steady["PATH"] == "/bin"
    assert {k: steady[k] for k in STEADY_ENV} == {
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4096 << 20)}
    assert "MALLOC_TRIM_THRESHOLD_" not in worker_env("system", base)
    with pytest.raises(ValueError, match="valid: steady, system"):
        worker_env("jemalloc", base)


def test_a_cpu_model_string_names_the_family_its_baselines_are_kept_for():
    from bench.measurement.fingerprint import cpu_family

    assert cpu_family("AMD EPYC") == cpu_family("AMD EPYC 7B13") == "epyc"
    assert cpu_family("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz") == "xeon"
    assert cpu_family("Neoverse-N1") == "neoverse" and cpu_family("") == "cpu"


def test_block_timed_trials_keep_per_iteration_overhead_out_of_throughput():
    # Before: every trial timed each step, so the event overhead (20%) was in the median.
    timer = EventLikeTimer(step_s=0.001, overhead=0.0002)
    steps = itertools.count()
    budget = Budget(min_trials=4, max_trials=10, trial_time_s=0.01, warmup_min_iters=2)
    m = measure(lambda: next(steps), timer, budget)
    assert m.summary.median == pytest.approx(0.001)
    assert m.trial_timing == "block" and all(len(t) == 1 for t in m.trials)
    # Latency from separate per-step trials (min_trials of them), not from the blocks.
    assert len(m.latency_trials) == budget.min_trials
    assert all(len(t) == m.iters_per_trial for t in m.latency_trials)
    assert m.latency_percentiles_s["p50"] == pytest.approx(0.0012)
    assert timer.block_calls == m.iters_per_trial * len(m.trials)
    assert m.steps_run == next(steps)  # every step the sampler ran, counted once


def test_per_iteration_timers_give_latency_from_the_trials_themselves():
    timer = ScriptedTimer(itertools.repeat(0.001))
    budget = Budget(min_trials=4, max_trials=50, trial_time_s=0.01, warmup_min_iters=2)
    m = measure(lambda: None, timer, budget)
    assert m.trial_timing == "per_iteration" and m.latency_trials == []
    assert m.steps_run == timer.calls


def test_perf_counter_block_times_a_known_sleep():
    import statistics

    timer = PerfCounterTimer()
    totals = [timer.time_block(lambda: time.sleep(0.01), 5) for _ in range(5)]
    assert min(totals) >= 0.05  # a sleep never returns early
    assert statistics.median(totals) <= 2 * 0.05 + 0.005  # a sanity bound: load wakes late


def test_lockstep_timer_keeps_block_timing_and_each_blocks_own_figure(tmp_path):
    import torch.distributed as dist

    from bench.measurement.lockstep import LockstepTimer

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        timer = LockstepTimer(EventLikeTimer(step_s=0.001, overhead=0.0002))
        budget = Budget(min_trials=3, max_trials=5, trial_time_s=0.01, warmup_min_iters=2)
        m = measure(lambda: None, timer, budget)
    finally:
        dist.destroy_process_group()
    assert timer.per_iteration_costs_host_time and m.trial_timing == "block"
    assert m.summary.median == pytest.approx(0.001)
    # What bench.runners.ranks keeps per rank: the throughput trials' blocks, in order.
    blocks = timer.local[:len(timer.local) - len(m.latency_trials)][-len(m.trials):]
    assert blocks == [[pytest.approx(0.001)]] * len(m.trials)
