""".ci/run's gate stages: exit 3 (no verdict: the host too noisy) is run once more, then a
warning with the host's steal share; a regression fails at once."""

from __future__ import annotations

import re
import subprocess

from tests.builders import REPO

MAKEFILE = """\
noisy:
\t@echo run >> runs; echo 3 > results/gate-exit-code; exit 3
noisy-once:
\t@echo run >> runs; if [ -f once ]; then echo 0 > results/gate-exit-code; \\
\telse touch once; echo 3 > results/gate-exit-code; exit 3; fi
regression:
\t@echo run >> runs; echo 1 > results/gate-exit-code; exit 1
"""


def _functions() -> str:
    """The functions .ci/run defines (jiffies, gate_stage): its text before the stages."""
    text = (REPO / ".ci" / "run").read_text()
    functions = text[text.index("jiffies()"):text.index("\ntimed make test\n")]
    assert "gate_stage()" in functions and "timed()" in functions
    return functions


def _stage(tmp_path, target: str) -> tuple[int, str, int]:
    (tmp_path / "results").mkdir(exist_ok=True)
    (tmp_path / "Makefile").write_text(MAKEFILE)
    script = f"set -euo pipefail\n{_functions()}\ngate_stage {target}\necho stage-passed\n"
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    runs = len((tmp_path / "runs").read_text().split())
    return proc.returncode, proc.stdout + proc.stderr, runs


def test_no_verdict_twice_is_a_warning_with_the_steal_share(tmp_path):
    code, out, runs = _stage(tmp_path, "noisy")
    assert code == 0 and runs == 2 and "stage-passed" in out
    assert re.search(r"try 1 of 2\): no verdict.*steal over the stage: \d+%", out), out
    assert "stayed undecided for the host's noise after a rerun: not failed" in out
    assert not (tmp_path / "0").exists()  # awk's printf once wrote its figure to a file


def test_no_verdict_then_a_verdict_passes_on_the_rerun(tmp_path):
    code, out, runs = _stage(tmp_path, "noisy-once")
    assert code == 0 and runs == 2 and "not failed" not in out


def test_a_regression_fails_at_once(tmp_path):
    code, out, runs = _stage(tmp_path, "regression")
    assert code != 0 and runs == 1 and "stage-passed" not in out


def test_a_timed_stage_says_its_wall_time_and_a_failing_one_stops_the_run(tmp_path):
    script = f"set -euo pipefail\n{_functions()}\ntimed true\ntimed false\necho after\n"
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert re.search(r"^ci: true took \d+ s$", proc.stdout, re.MULTILINE), proc.stdout
    assert proc.returncode != 0 and "after" not in proc.stdout
    assert "ci: false took" not in proc.stdout
