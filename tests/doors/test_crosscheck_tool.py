"""tools/crosscheck_timer.py, the independent reference for the suite's timer: its
hand-written event-loop reference measures a known sleep, runs the statement it prints,
and the gpt training-step cross-check agrees with the suite on CPU."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import crosscheck_timer  # noqa: E402


def test_event_loop_reference_measures_a_known_sleep():
    median = crosscheck_timer.event_loop_median(lambda: time.sleep(0.02), "cpu",
                                                min_run_time=0.5, block_s=0.1,
                                                warmup_s=0.05)
    # A sanity bound: a sleep never returns early, and on a loaded host it may wake late.
    assert 0.02 <= median <= 2 * 0.02 + 0.005


def test_the_reference_statement_is_what_the_function_runs():
    env = {"calls": []}
    step = crosscheck_timer._as_function("calls.append(1)\ncalls.append(2)", env)
    step()
    assert env["calls"] == [1, 2]


def test_a_gpt_training_step_cannot_be_replayed_by_torch_utils_benchmark():
    out = subprocess.run([sys.executable, str(REPO / "tools" / "crosscheck_timer.py"),
                          "--workload", "gpt", "--reference", "tub"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "use --reference events" in out.stderr


@pytest.mark.alone
@pytest.mark.heavy
def test_gpt_training_step_agrees_with_a_hand_written_loop_on_cpu():
    # This checks the two sides time the same step (not half of it, not twice), at 50%.
    # One thread on both sides: on a shared 2-core VM a fresh 2-thread process can run in
    # a slow mode for tens of seconds, invisible to /proc/stat (issue 27), and at a6ce8e2
    # both suite processes of CI's run landed in it (x1.46 and x1.69 against their
    # reference processes); one-thread processes have shown no second mode.
    out = subprocess.run([sys.executable, str(REPO / "tools" / "crosscheck_timer.py"),
                          "--workload", "gpt", "--model", "tiny", "--batch-sizes", "8",
                          "--processes", "2", "--min-run-time", "1", "--tolerance", "0.5",
                          "--threads", "1"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "threads: 1;" in out.stdout
    assert "event loop ms" in out.stdout and "gpt/train[" in out.stdout
