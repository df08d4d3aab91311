from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Test modules share builders (test_gate's records) by plain import.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def write_suite(tmp_path: Path):
    """Write a suite file from a TOML snippet and return its path."""

    def write(text: str, name: str = "suite.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
