from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Test modules share builders (test_gate's records) by plain import.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test: two workers on two cores) each worker, and the bench
    workers it starts, computes on one thread: two 2-thread OpenMP pools on two cores spin
    against each other (an in-process training test ran 4x slower)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


# A budget of the fewest trials a verdict needs and almost no time: tests of the engine's
# plumbing (sharding, merging, executors), not of its figures.
QUICK_BUDGET = """\
[budget]
min_trials = 4
max_trials = 4
max_time_s = 0.2
trial_time_s = 0.005
warmup_max_s = 0.01
timeout_s = 60
"""


# A few short trials of a real workload in a real worker: tests of A/B rounds that time
# something, not of how precisely.
ROUND_BUDGET = ('[budget]\nmin_trials = 4\nmax_trials = 4\ntrial_time_s = 0.01\n'
                'warmup_max_s = 0.05\nmax_time_s = 0.3\ntimeout_s = 120\n')


def sleep_suite(name: str, cases: int) -> str:
    """A suite of ``cases`` sleep benchmarks labelled s1.. (0.1, 0.2, ... ms per step)."""
    return f'[suite]\nname = "{name}"\n' + QUICK_BUDGET + "".join(
        f'[[benchmark]]\nlabel = "s{i}"\nworkload = "sleep"\nphase = "infer"\n'
        f"params = {{ sleep_ms = 0.{i} }}\n" for i in range(1, cases + 1))


@pytest.fixture
def write_suite(tmp_path: Path):
    """Write a suite file from a TOML snippet and return its path."""

    def write(text: str, name: str = "suite.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
