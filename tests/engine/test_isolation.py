"""Faults are data: crashes, hangs, memory blow-ups and exceptions become statuses,
and a sweep killed with SIGKILL loses no finished case and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench.launch.isolation import run_isolated
from bench.results.store import load_run
from bench.spec.model import Budget, CaseSpec
from tests.builders import FAULT_BUDGET, REPO, benchmark_text, budget_text, fault_case, suite_text

pytestmark = pytest.mark.slow

def test_abort_is_crashed_with_signal_and_stderr():
    result = run_isolated(fault_case("abort"))
    assert result.status == "crashed"
    assert result.reason == "worker killed by SIGABRT"
    assert "Fatal Python error: Aborted" in result.stderr_tail or \
        "diagnostics.py" in result.stderr_tail


def test_hang_is_timeout():
    started = time.monotonic()
    result = run_isolated(fault_case("hang", timeout_s=4))
    assert result.status == "timeout"
    assert "no result after 4 s" in result.reason
    assert time.monotonic() - started < 15


def test_memory_limit_is_oom():
    result = run_isolated(fault_case("memory", memory_limit_mib=700))
    assert result.status == "oom"
    assert "exceeded the memory limit 700 MiB" in result.reason
    assert result.details["watchdog_peak_rss_mib"] > 700


def test_exception_is_error_with_traceback():
    result = run_isolated(fault_case("raise"))
    assert result.status == "error"
    assert result.reason == "RuntimeError: injected failure"
    assert "diagnostics.py" in result.stderr_tail


def test_healthy_case_is_ok_with_every_figure():
    sleep = CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 20.0},
                     Budget(**{**FAULT_BUDGET.to_dict(), "max_time_s": 2.0, "trial_time_s": 0.1}))
    result = run_isolated(sleep)
    assert result.measured, (result.status, result.reason, result.stderr_tail)
    t = result.timing
    # A sanity bound: a sleep never returns early, and on a loaded host it may wake late
    # (the timer's precision: scripted clocks in test_measurement.py).
    assert 0.020 <= t.median_s <= 2 * 0.020 + 0.005
    assert t.timer == "perf_counter_ns" and t.ci_low_s <= t.median_s <= t.ci_high_s
    assert result.throughput.value == pytest.approx(1 / t.median_s)
    assert result.memory.peak_rss_mib > 10
    assert result.worker["pid"] != os.getpid()


SWEEP_SUITE = suite_text(
    benchmark_text("sleep", params="{ sleep_ms = 5.0 }"),
    benchmark_text("fault", matrix='{ fault = ["none", "abort", "raise"] }'),
    benchmark_text("sleep", label="s7", params="{ sleep_ms = 7.0 }"),
    benchmark_text("sleep", label="s9", params="{ sleep_ms = 9.0 }"),
    name="killme", budget=budget_text(min_trials=4, max_trials=4, trial_time_s=0.05,
                                      warmup_max_s=0.1, max_time_s=1.0))


def _bench(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


@pytest.mark.heavy  # two bench runs and seven workers end to end (about 20 s)
def test_sweep_killed_with_sigkill_then_resumed(write_suite, tmp_path):
    suite = write_suite(SWEEP_SUITE)
    out = tmp_path / "run.json"
    proc = _bench("run", str(suite), "--out", str(out), "--no-progress")
    deadline = time.monotonic() + 120
    finished = 0
    while time.monotonic() < deadline and finished < 2:
        time.sleep(0.1)
        if out.exists():
            finished = len(json.loads(out.read_text())["cases"])
    assert finished >= 2, "sweep did not finish two cases in time"
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(children, timeout=10)  # orphaned workers exit by themselves

    before = load_run(out)
    assert 2 <= len(before.cases) < 6
    kept = {c.case_id: c.finished_at for c in before.cases}

    resumed = _bench("run", str(suite), "--out", str(out), "--resume", "--no-progress",
                     "--quiet")
    _, err = resumed.communicate(timeout=300)
    # One fault case crashes, one raises: the run is whole, and says it failed (exit 1).
    assert resumed.returncode == 1, err
    assert f"{len(kept)} cases done" in err
    assert err.strip().splitlines()[-1] == \
        "bench run: 2 of 6 cases failed (1 crashed, 1 error): exit 1"

    after = load_run(out)
    assert len(after.cases) == 6
    assert len({c.case_id for c in after.cases}) == 6
    for case in after.cases:
        if case.case_id in kept:
            assert case.finished_at == kept[case.case_id], "a finished case was re-run"
    # a measured case the host stole CPU from is contended: it counts as done, as ok does
    statuses = {c.case_id: "ok" if c.measured else c.status for c in after.cases}
    assert statuses == {
        "sleep/infer[]": "ok", "sleep/infer:s7[]": "ok", "sleep/infer:s9[]": "ok",
        "fault/infer[fault=none]": "ok", "fault/infer[fault=abort]": "crashed",
        "fault/infer[fault=raise]": "error"}


def test_existing_result_file_is_not_overwritten_silently(write_suite, tmp_path):
    out = tmp_path / "run.json"
    out.write_text("{}")
    proc = _bench("run", str(write_suite(SWEEP_SUITE)), "--out", str(out))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "pass --resume" in err


def test_processes_pool_trials_of_independent_workers():
    from bench.launch.isolation import run_in_processes

    budget = Budget(**{**FAULT_BUDGET.to_dict(), "processes": 2, "trial_time_s": 0.02})
    case = CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 5.0}, budget)
    result = run_in_processes(case)
    assert result.status in ("ok", "contended")  # contended: the host stole CPU, figures kept
    pids = result.details["process_pids"]
    assert len(pids) == 2 and len(set(pids)) == 2
    assert len(result.timing.trial_samples_s) >= 2 * FAULT_BUDGET.min_trials
    assert len(result.rounds.medians_s) == 2
    assert 0.005 <= result.timing.median_s <= 2 * 0.005 + 0.005  # a sanity bound, as above
    assert "each of 2 worker processes" in result.timing.statistic
    assert sum(result.details["trials_per_process"]) == len(result.timing.trial_samples_s)


def test_processes_stop_at_first_failure():
    from bench.launch.isolation import run_in_processes

    result = run_in_processes(fault_case("raise", processes=3))
    assert result.status == "error"
    assert result.details["processes_completed"] == 0


def test_pooling_weights_processes_equally():
    """A noisy process that ran to max_trials must not outvote a quick, steady one."""
    import dataclasses

    from bench.launch.merge import merge_process_results
    from bench.results.schema import CaseResult, ThroughputResult, TimingResult

    def run(value: float, trials: int) -> CaseResult:
        timing = TimingResult(
            timer="t", timer_description="", step_description="", cold_start_s=value,
            warmup_iterations=1, warmup_steady=True, warmup_s=0.0, iters_per_trial=1,
            trial_samples_s=[[value]] * trials, trial_means_s=[value] * trials,
            median_s=value, mean_s=value, std_s=0.0, cv=0.0, ci_low_s=value,
            ci_high_s=value, ci_level=0.95, ci_method="", latency_s={}, stop_reason="x")
        return CaseResult(case_id="c", workload="w", phase="infer", axes={}, params={},
                          status="ok", budget={"processes": 3, "cv_warning": 0.1},
                          timing=timing, worker={"pid": trials},
                          throughput=ThroughputResult(1 / value, 0, 0, "samples/s", 1, ""))

    slow_and_long = run(2.0, 40)
    merged = merge_process_results([slow_and_long, run(1.0, 5), run(1.0, 5)])
    assert merged.timing.median_s == 1.0
    assert len(merged.timing.trial_samples_s) == 50
    assert merged.details["trials_per_process"] == [40, 5, 5]
    assert dataclasses.asdict(merged)["throughput"]["value"] == 1.0

    # A process timed while the host stole CPU is measured: pooled, and the case says so.
    # (Before: the contended process's record alone stood for the case.)
    stolen = dataclasses.replace(run(1.0, 5), status="contended", reason="steal 24%")
    merged = merge_process_results([run(1.0, 5), stolen, run(1.0, 5)])
    assert merged.status == "contended" and merged.reason == "steal 24%"
    assert merged.details["trials_per_process"] == [5, 5, 5]


@pytest.mark.parametrize("policy, expected", [
    ("steady", "MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_=4096 MiB"),
    ("system", "default settings (dynamic mmap threshold)"),
])
def test_worker_measures_in_the_allocator_state_it_records(policy, expected, monkeypatch):
    # A tunable left in the parent's environment must not leak into a `system` worker.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    sleep = CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 1.0},
                     Budget(**{**FAULT_BUDGET.to_dict(), "allocator": policy}))
    result = run_isolated(sleep)
    assert result.status in ("ok", "contended"), result.stderr_tail  # contended: figures kept
    assert result.details["allocator"].endswith(expected)
    assert result.budget["allocator"] == policy
