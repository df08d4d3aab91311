"""The pytest front door: suite cases as pytest items, pytest-benchmark stats from our
trials, our figures in extra_info, skips and failures with reasons, compare-fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SUITE = """
[suite]
name = "plug"
[budget]
min_trials = 5
max_trials = 8
max_time_s = 1.0
trial_time_s = 0.05
warmup_max_s = 0.1
[[benchmark]]
workload = "sleep"
phase = "infer"
params = { sleep_ms = 10.0 }
[[benchmark]]
workload = "fault"
phase = "infer"
matrix = { fault = ["raise"] }
[[benchmark]]
workload = "digits_cnn"
phase = "infer"
matrix = { device = ["cuda"], batch_size = [8] }
"""


def pytest_run(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "suites", "-p", "no:cacheprovider",
                           "-q", "-rfs", *args], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture
def suite_dir(tmp_path):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "plug.toml").write_text(SUITE)
    return tmp_path


def test_cases_run_as_benchmarks_with_our_stats(suite_dir):
    out = pytest_run(suite_dir, "--benchmark-only", "--benchmark-json=out.json")
    assert out.returncode == 1, out.stdout  # the injected fault fails
    text = out.stdout
    assert "FAILED suites/plug.toml::fault-infer[raise]" in text
    assert "error: RuntimeError: injected failure" in text
    assert "SKIPPED" in text and "CUDA not available" in text
    data = json.loads((suite_dir / "out.json").read_text())
    assert "bench_fingerprint" in data["machine_info"]
    (bench,) = data["benchmarks"]
    assert bench["name"] == "sleep-infer"
    # pytest-benchmark's statistics are computed from the worker's own trials.
    assert bench["stats"]["median"] == pytest.approx(bench["extra_info"]["median_s"], rel=1e-9)
    assert bench["stats"]["median"] == pytest.approx(0.010, rel=0.1)
    assert bench["extra_info"]["status"] == "ok"
    assert bench["extra_info"]["throughput"]["unit"] == "samples/s"
    assert bench["extra_info"]["memory"]["peak_rss_mib"] > 10


def test_compare_fail_catches_an_injected_slowdown(suite_dir):
    select = ["--benchmark-only", "-k", "sleep"]
    assert pytest_run(suite_dir, *select, "--benchmark-autosave").returncode == 0
    same = pytest_run(suite_dir, *select, "--benchmark-compare",
                      "--benchmark-compare-fail=median:10%")
    assert same.returncode == 0, same.stdout + same.stderr
    slow = pytest_run(suite_dir, *select, "--benchmark-compare",
                      "--benchmark-compare-fail=median:10%", env={"BENCH_TEST_SLOWDOWN": "0.3"})
    assert slow.returncode != 0
    assert "Performance has regressed" in slow.stdout + slow.stderr
