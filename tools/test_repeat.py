"""Run the test suite N times in fresh clones, optionally beside busy processes, and print
each test's failures and each run's wall time: is `make test` deterministic on a noisy host?

    python tools/test_repeat.py --runs 5 --busy 2        # make test-repeat RUNS=5 BUSY=2

Each run clones this repository's HEAD into a temporary folder (committed work only, as CI
sees it) and runs `make test` there, with pytest writing a JUnit XML report
(PYTEST_ADDOPTS); with ``--busy K``, K processes spin (`while True: pass`, normal priority)
for the whole run. ``--reuse-venv`` links this checkout's .venv into each clone instead of
building one (faster; the clone's own bench package is still the one imported: `python -m
pytest` puts the clone first on sys.path). ``--target`` runs another make target
(test-heavy). Exit 0 when every run passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPIN = "while True: pass"


@dataclass
class Run:
    index: int
    busy: int
    returncode: int
    wall_s: float
    pytest_s: float | None = None
    tests: int = 0
    failed: list[str] = field(default_factory=list)
    slowest: list[tuple[float, str]] = field(default_factory=list)


def read_junit(path: Path) -> tuple[float | None, int, list[str], list[tuple[float, str]]]:
    """pytest's wall time, the test count, the failed tests and every test's duration."""
    if not path.is_file():
        return None, 0, [], []
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    wall = sum(float(s.get("time", 0)) for s in suites)
    failed, durations, count = [], [], 0
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        count += 1
        durations.append((float(case.get("time", 0)), name))
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
    return wall, count, failed, sorted(durations, reverse=True)


@contextlib.contextmanager
def spinners(count: int):
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def one_run(index: int, busy: int, target: str, reuse_venv: bool, log_dir: Path) -> Run:
    folder = Path(tempfile.mkdtemp(prefix="bench-test-repeat-"))
    clone = folder / "src"
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        if reuse_venv:
            (clone / ".venv").symlink_to(REPO / ".venv")
        junit = folder / "junit.xml"
        env = {**os.environ, "PYTEST_ADDOPTS": f"--junitxml={junit}"}
        log = log_dir / f"run-{index}.log"
        command = ["make", target] + (["-o", ".venv/.installed"] if reuse_venv else [])
        started = time.monotonic()
        with spinners(busy), log.open("w") as out:
            code = subprocess.run(command, cwd=clone, env=env, stdout=out,
                                  stderr=subprocess.STDOUT).returncode
        wall = time.monotonic() - started
        pytest_s, count, failed, durations = read_junit(junit)
        return Run(index, busy, code, wall, pytest_s, count, failed, durations[:15])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def render(runs: list[Run]) -> str:
    lines = ["| run | busy processes | exit | tests | failed | pytest s | make s |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        pytest_s = "" if r.pytest_s is None else f"{r.pytest_s:.0f}"
        lines.append(f"| {r.index} | {r.busy} | {r.returncode} | {r.tests} | {len(r.failed)} | "
                     f"{pytest_s} | {r.wall_s:.0f} |")
    failures = collections.Counter(name for r in runs for name in r.failed)
    lines += ["", "Failures per test:" if failures else "No test failed in any run."]
    lines += [f"- {count}/{len(runs)} {name}" for name, count in failures.most_common()]
    slowest: dict[str, list[float]] = collections.defaultdict(list)
    for r in runs:
        for seconds, name in r.slowest:
            slowest[name].append(seconds)
    top = sorted(slowest.items(), key=lambda kv: -max(kv[1]))[:15]
    lines += ["", "Slowest tests (seconds, each run where among its 15 slowest):"]
    lines += [f"- {name}: {', '.join(f'{s:.1f}' for s in seconds)}" for name, seconds in top]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh clones to test (3)")
    parser.add_argument("--busy", type=int, default=0,
                        help="busy processes beside every run (0)")
    parser.add_argument("--loaded-runs", type=int, default=None,
                        help="of the runs, how many get the busy processes (default: all)")
    parser.add_argument("--target", default="test", help="the make target (test)")
    parser.add_argument("--reuse-venv", action="store_true",
                        help="link this checkout's .venv into each clone")
    parser.add_argument("--log-dir", default=None, help="keep each run's output here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.busy < 0:
        parser.error("--runs must be >= 1 and --busy >= 0")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-test-repeat-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    loaded = args.runs if args.loaded_runs is None else args.loaded_runs
    runs = []
    for index in range(1, args.runs + 1):
        busy = args.busy if index > args.runs - loaded else 0
        print(f"run {index}/{args.runs}: make {args.target} in a fresh clone, {busy} busy "
              "processes", file=sys.stderr, flush=True)
        runs.append(one_run(index, busy, args.target, args.reuse_venv, log_dir))
        print(f"  exit {runs[-1].returncode}, {len(runs[-1].failed)} failed, "
              f"{runs[-1].wall_s:.0f} s", file=sys.stderr, flush=True)
    print(render(runs))
    print(f"\nlogs: {log_dir}")
    return 0 if all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
