"""Processes: Ctrl-C stops a sweep at once and kills its worker; a sweep killed
at any moment leaves no worker behind; killed sweeps' temporary directories are removed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from bench.results.store import load_run
from tests.builders import ROUND_BUDGET, benchmark_text, suite_text

REPO = Path(__file__).resolve().parents[2]
MARK = "BENCH_SIGNAL_TEST_MARK"

HANG_SUITE = suite_text(
    benchmark_text("sleep", params="{ sleep_ms = 1.0 }"),
    benchmark_text("fault", matrix='{ fault = ["hang"] }'), budget=ROUND_BUDGET)


def marked(mark: str) -> list[psutil.Process]:
    """Live processes started with MARK=mark in their environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARK) == mark:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def as_a_foreground_job() -> None:
    """Between fork and exec: SIGINT and SIGQUIT as a terminal's foreground job has them.
    A process ignoring them passes that on (a shell ignores both for a background job:
    make test started with `&` ran bench with SIGINT ignored, which no Ctrl-C reaches)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def start_sweep(suite: Path, out: Path, mark: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--out",
                             str(out), "--no-progress", "--quiet"], cwd=REPO,
                            env={**os.environ, MARK: mark}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_a_foreground_job)


def case_file_of(pid: int) -> Path | None:
    """The case file of a worker process (spawned, or forked by a fork server): its stderr
    is the ``err`` file in its case's directory, beside ``case.json``."""
    try:
        err = Path(os.readlink(f"/proc/{pid}/fd/2"))
    except OSError:
        return None
    return err.parent / "case.json" if err.name == "err" and \
        err.parent.name.startswith("bench-case-") else None


def wait_for_worker_of(proc: subprocess.Popen, case_name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if case_name in case_file_of(child.pid).read_text():
                    return
            except (psutil.Error, OSError, AttributeError):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker for {case_name} within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_on_a_hang_case_exits_at_once_and_kills_the_worker(write_suite, tmp_path,
                                                                  sig, code, word):
    out = tmp_path / "run.json"
    mark = uuid.uuid4().hex
    proc = start_sweep(write_suite(HANG_SUITE), out, mark)
    wait_for_worker_of(proc, '"hang"', timeout=120)
    time.sleep(1.0)
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        state = _process_state(proc.pid)
        proc.kill()
        raise AssertionError(f"bench run still running 30 s after {sig.name}: {state}") from None
    took = time.monotonic() - started
    # At once, against the case's 120 s timeout (a loaded host may take seconds to unwind).
    assert took < 10.0, f"exited {took:.1f} s after {sig.name}"
    assert proc.returncode == code and word in err, err
    assert marked(mark) == [], "a worker outlived the interrupted sweep"
    record = load_run(out)  # the file is whole, with the finished case
    assert [c.workload for c in record.cases] == ["sleep"]


def _process_state(pid: int) -> str:
    """What a process that did not exit is doing: its signal masks, threads and children."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        lines = [line for line in status if line.split(":")[0] in (
            "State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "Threads")]
        for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
            stat = (task / "stat").read_text()
            wchan = (task / "wchan").read_text() if (task / "wchan").exists() else "?"
            blocked = next((line for line in (task / "status").read_text().splitlines()
                            if line.startswith("SigBlk")), "")
            lines.append(f"task {task.name} {stat[stat.rindex(')') + 2]} {wchan} {blocked}")
        lines += [f"child {c.pid} {c.status()} {' '.join(c.cmdline())[:120]}"
                  for c in psutil.Process(pid).children(recursive=True)]
        return "; ".join(lines)
    except (OSError, psutil.Error) as exc:
        return f"unreadable: {exc}"


def _worker_started(proc: subprocess.Popen) -> bool:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return False
    return any(case_file_of(child.pid) for child in children)


@pytest.mark.heavy
@pytest.mark.slow
def test_a_sweep_killed_at_random_moments_leaves_no_worker(write_suite, tmp_path):
    # Not alone: it times nothing. A worker that outlives its sweep runs its hang case until
    # killed, so the grace for the dead to go can be long (a busy host reaps late).
    # The hang case alone: a worker that outlives its sweep would run until killed.
    suite = write_suite(HANG_SUITE.split("[[benchmark]]")[0] + "[[benchmark]]" +
                        HANG_SUITE.split("[[benchmark]]")[2])
    rng = random.Random(11)
    survivors = []
    for attempt in range(20):
        mark = uuid.uuid4().hex
        proc = start_sweep(suite, tmp_path / f"run{attempt}.json", mark)
        if attempt % 4 == 0:  # any moment: before the suite is loaded, or long after
            time.sleep(rng.uniform(0.1, 4.0))
        else:  # the worker's first instants, before any code of its own can watch us
            deadline = time.monotonic() + 60
            while not _worker_started(proc) and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10.0
        while (left := marked(mark)) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors += left
        for p in left:  # never leave them running, even when the test fails
            p.kill()
    assert survivors == [], f"{len(survivors)} workers outlived their killed sweep"


def test_killed_sweeps_case_directories_are_removed(tmp_path):
    from bench.launch.isolation import remove_stale_case_dirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = psutil.Process()
    stale, live, old_style = (tmp_path / f"bench-case-{n}" for n in ("a", "b", "c"))
    for d in (stale, live, old_style):
        d.mkdir()
    (stale / "owner").write_text(f"{dead.pid} 12345.0")
    (live / "owner").write_text(f"{me.pid} {me.create_time()}")
    two_hours_ago = time.time() - 7200
    os.utime(old_style, (two_hours_ago, two_hours_ago))
    removed = remove_stale_case_dirs(tmp_path)
    assert sorted(removed) == sorted([stale, old_style])
    assert live.exists() and not stale.exists()
