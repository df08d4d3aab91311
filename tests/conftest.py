"""Fixtures every test folder shares; what tests build is in tests/builders.py."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test: two workers on two cores) each worker, and the bench
    workers it starts, computes on one thread: two 2-thread OpenMP pools on two cores spin
    against each other (an in-process training test ran 4x slower)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


@pytest.fixture
def write_suite(tmp_path: Path):
    """Write a suite file from a TOML snippet and return its path."""

    def write(text: str, name: str = "suite.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
