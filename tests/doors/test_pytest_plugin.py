"""The pytest front door: suite cases as pytest items, pytest-benchmark stats from our
trials, our figures in extra_info, skips and failures with reasons, compare-fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.builders import benchmark_text, budget_text, suite_text

pytestmark = pytest.mark.slow

SUITE = suite_text(
    benchmark_text("sleep", params="{ sleep_ms = 10.0 }"),
    benchmark_text("fault", matrix='{ fault = ["raise"] }'),
    benchmark_text("digits_cnn", matrix='{ device = ["cuda"], batch_size = [8] }'),
    name="plug", budget=budget_text(min_trials=5, max_trials=8, max_time_s=1.0,
                                    trial_time_s=0.05, warmup_max_s=0.1))


def child_env(extra: dict | None = None) -> dict[str, str]:
    """This process's environment for a child pytest, less what pytest-xdist sets in its
    workers (with PYTEST_XDIST_WORKER, pytest-benchmark disables itself in the child)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    return {**env, **(extra or {})}


def pytest_run(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "suites", "-p", "no:cacheprovider",
                           "-q", "-rfs", "--bench-suites", *args], cwd=tmp_path,
                          capture_output=True, text=True,
                          env=child_env(env), timeout=300)


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
    assert bench["name"] == "sleep-infer" and bench["group"] == "plug sleep/infer"
    # pytest-benchmark's statistics are computed from the worker's own trials.
    assert bench["stats"]["median"] == pytest.approx(bench["extra_info"]["median_s"], rel=1e-9)
    assert 0.010 <= bench["stats"]["median"] <= 2 * 0.010 + 0.005  # sanity bounds on a sleep
    assert bench["extra_info"]["status"] in ("ok", "contended")
    assert bench["extra_info"]["throughput"]["unit"] == "samples/s"
    assert bench["extra_info"]["memory"]["peak_rss_mib"] > 10


@pytest.mark.alone
@pytest.mark.heavy
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


def plain_pytest(folder, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "-rfs", *args], cwd=folder, capture_output=True, text=True,
                          env=child_env(env), timeout=300)


USER_MODEL = """
import torch
from bench import UserModel
from tests.builders import benchmark_text, budget_text, suite_text


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return UserModel(model, lambda batch, seed: (
        torch.randn(batch, 8, generator=torch.Generator().manual_seed(seed)),))
"""

USER_TEST = """
BUDGET = {"min_trials": 4, "max_trials": 4, "trial_time_s": 0.01, "warmup_max_s": 0.05,
          "max_time_s": 0.5}


def test_plain():
    assert 1 + 1 == 2


def test_my_model(bench_model):
    result = bench_model("usermodel:build", batch_size=4, budget=BUDGET)
    assert result.measured, result.reason
    assert result.throughput.value > 0 and result.throughput.unit == "samples/s"
    assert result.timing.latency_s["p99"] > 0
    assert result.memory.peak()[0] > 0
    assert result.accuracy.metrics["fidelity_mean_cos"] > 0.999
"""


@pytest.fixture
def user_project(tmp_path):
    (tmp_path / "usermodel.py").write_text(USER_MODEL)
    (tmp_path / "test_usermodel.py").write_text(USER_TEST)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "theirs.toml").write_text(SUITE)  # not ours to collect
    return tmp_path


def test_the_bench_model_fixture_feeds_pytest_benchmark(user_project):
    out = plain_pytest(user_project, "--benchmark-only", "--benchmark-json=out.json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 1 skipped" in out.stdout  # test_plain is not a benchmark
    (bench,) = json.loads((user_project / "out.json").read_text())["benchmarks"]
    assert bench["name"] == "test_my_model"
    assert bench["extra_info"]["case_id"] == "model/infer:usermodel[batch_size=4]"
    assert bench["stats"]["median"] == pytest.approx(bench["extra_info"]["median_s"], rel=1e-9)


MARKED_TEST = """
import pytest

BUDGET = {"min_trials": 4, "max_trials": 4, "trial_time_s": 0.01, "warmup_max_s": 0.05,
          "max_time_s": 0.5}


@pytest.mark.bench("usermodel:build", batch_size=2, budget=BUDGET)
def test_marked(bench_result):
    assert bench_result.measured and bench_result.axes["batch_size"] == 2


def test_unmarked(bench_result):
    pass
"""


def test_the_bench_marker_runs_the_case_and_a_test_without_it_errs_in_one_line(user_project):
    (user_project / "test_usermodel.py").unlink()
    (user_project / "test_marked.py").write_text(MARKED_TEST)
    out = plain_pytest(user_project, "--benchmark-only", "--benchmark-json=out.json")
    assert out.returncode == 1, out.stdout + out.stderr
    summary = out.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "1 error" in summary  # the fixture refuses at setup
    assert "bench_result needs @pytest.mark.bench(model, **axes)" in out.stdout
    (bench,) = json.loads((user_project / "out.json").read_text())["benchmarks"]
    assert bench["name"] == "test_marked"


def test_without_pytest_benchmark_nothing_breaks_and_no_suites_are_collected(user_project):
    """pytest-benchmark not importable (a shadow package) and not loaded: no INTERNALERROR
    from its hooks, suites/*.toml left alone, the fixture still runs the user's model."""
    shadow = user_project / "shadow" / "pytest_benchmark"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('pytest-benchmark is absent')")
    out = plain_pytest(user_project, "-p", "no:benchmark",
                       env={"PYTHONPATH": str(user_project / "shadow")})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout and "INTERNALERROR" not in out.stdout + out.stderr


def test_suite_items_run_without_pytest_benchmark(suite_dir):
    """Before: "fixture 'benchmark' not found" for every item."""
    out = pytest_run(suite_dir, "-p", "no:benchmark", "-k", "sleep or fault")
    assert out.returncode == 1, out.stdout + out.stderr  # the injected fault fails
    assert "1 failed, 1 passed" in out.stdout and "fixture 'benchmark' not found" not in out.stdout


def test_suites_are_collected_only_when_asked(suite_dir):
    out = plain_pytest(suite_dir, "suites")
    assert out.returncode == 5, out.stdout  # no tests collected


TIME_TO_ACCURACY = suite_text(
    benchmark_text("linreg", "train", label="reachable", target="{ val_mse = 0.02 }",
                   training="{ seeds = 3, eval_every = 64, max_epochs = 20, max_time_s = 20 }"),
    benchmark_text("linreg", "train", label="impossible", target="{ val_mse = 0.0 }",
                   training="{ seeds = 3, eval_every = 64, max_epochs = 2, max_time_s = 20 }"),
    budget=budget_text(timeout_s=60))


def test_a_time_to_accuracy_item_reports_its_score_and_a_missed_target_fails(tmp_path):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "tta.toml").write_text(TIME_TO_ACCURACY)
    out = pytest_run(tmp_path, "--benchmark-only", "--benchmark-json=out.json")
    assert out.returncode == 1, out.stdout
    # Not measured to its target: the item fails with the status and its reason.
    assert "FAILED suites/tta.toml::linreg-train:impossible" in out.stdout
    assert "not_converged: 3 of 3 seeds did not reach val_mse <= 0" in out.stdout
    benches = {b["name"]: b for b in json.loads((tmp_path / "out.json").read_text())["benchmarks"]}
    reached = benches["linreg-train:reachable"]["extra_info"]["time_to_accuracy"]
    assert reached["converged"] == 3 and reached["score_s"] > 0
    assert reached["target"] == "val_mse <= 0.02"
