"""The baton of lockstep A/B rounds (bench.measurement.baton): two real processes take
strict turns, an ended partner frees the other, waiting is kept out of the worker's own
clock and out of its interference window; bench ab runs both sides at once where it can."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.launch.isolation import WorkerCode
from bench.launch.launcher import LocalLauncher
from bench.measurement import interference as interference_module
from bench.measurement.baton import (
    BATON_ENV,
    BatonPair,
    BatonTimer,
    baton_pair,
    supports_baton,
)
from bench.measurement.interference import InterferenceProbe
from bench.orchestrate.interleave import Side, run_interleaved
from bench.orchestrate.rounds import Arm, Stopping, lockstep_possible
from tests.builders import ROUND_BUDGET

ROOT = Path(__file__).resolve().parents[2]

# A process that takes the baton, then in each of its turns appends "NAME i" to a log.
TURNS = textwrap.dedent("""
    import sys, time
    from bench.measurement import baton
    name, log, turns, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    b = baton.take_from_env()
    for i in range(turns):
        if i:
            b.pass_turn()
        with open(log, "a") as f:
            f.write(f"{name} {i}\\n")
        time.sleep(pause)
    print(f"{b.waited_s:.4f} {b.turns} {b.partner_done}")
""")


def start(pair: BatonPair, side: int, name: str, log: Path, turns: int,
          pause: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TURNS, name, str(log), str(turns),
                             str(pause)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**_env(), **pair.env(side)})


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != BATON_ENV}


def finish(pair: BatonPair, procs: dict[int, subprocess.Popen]) -> dict[int, str]:
    """Wait for both, telling each one's partner when it has ended (as the parent does)."""
    out = {}
    for side, proc in procs.items():
        out[side] = proc.communicate(timeout=60)[0]
        pair.ended(side)
    return out


@pytest.mark.parametrize("first", [0, 1])
def test_two_processes_take_strict_turns_and_the_last_runs_on_alone(tmp_path, first):
    log = tmp_path / "log"
    with baton_pair() as pair:
        pair.begin(first)
        # Side 1 has more turns: after side 0 ends, it must not wait for a turn that
        # never comes.
        procs = {0: start(pair, 0, "A", log, 4), 1: start(pair, 1, "B", log, 7)}
        out = {}
        out[0] = procs[0].communicate(timeout=60)[0]
        pair.ended(0)
        out[1] = procs[1].communicate(timeout=60)[0]
    lines = log.read_text().split()[::2]
    # A's four turns alternate with B's; B's three extra turns come after A has ended.
    alternated = ["A", "B"] * 4 if first == 0 else ["B", "A"] * 4
    assert lines == alternated + ["B"] * 3
    assert out[1].split()[2] == "True"  # B was told its partner had ended


def test_a_partner_killed_in_its_turn_does_not_hang_the_other(tmp_path):
    log = tmp_path / "log"
    with baton_pair() as pair:
        pair.begin(0)
        # A sleeps in its first turn; it is killed there, holding the baton.
        a = start(pair, 0, "A", log, 3, pause=30.0)
        b = start(pair, 1, "B", log, 3)
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text() == "A 0\n" and b.poll() is None  # B waits for A's baton
        a.kill()
        a.wait()
        pair.ended(0)
        out = b.communicate(timeout=60)[0]
    assert b.returncode == 0 and out.split()[2] == "True"
    assert log.read_text().split()[::2] == ["A", "B", "B", "B"]


def test_waiting_for_the_baton_is_kept_out_of_the_workers_own_clock(tmp_path):
    """A real wait: B waits through A's turns (0.2 s each). After B's own first turn it
    must wait through A's second and third whole, so at least 0.4 s; A's first turn may
    be over before B has started at all (a sanity bound, no upper bound: the host may be
    slow)."""
    log = tmp_path / "log"
    with baton_pair() as pair:
        pair.begin(0)
        procs = {0: start(pair, 0, "A", log, 3, pause=0.2), 1: start(pair, 1, "B", log, 3)}
        out = finish(pair, procs)
    waited_b, turns_b = float(out[1].split()[0]), int(out[1].split()[1])
    assert waited_b >= 0.4 and turns_b == 3


class FakeBaton:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.listeners: list = []

    def pass_turn(self) -> None:
        self.calls.append("pass")


class CountingTimer:
    name, description, per_iteration_costs_host_time = "t", "counting", False

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def time_iterations(self, step, iterations):  # noqa: ANN001, ANN201
        self.calls.append(f"time {iterations}")
        return [0.001] * iterations

    def time_block(self, step, iterations):  # noqa: ANN001, ANN201
        self.calls.append(f"block {iterations}")
        return 0.001 * iterations


def test_the_baton_timer_passes_the_turn_before_every_timed_block():
    baton = FakeBaton()
    timer = BatonTimer(CountingTimer(baton.calls), baton)
    timer.time_iterations(lambda: None, 3)
    timer.time_block(lambda: None, 5)
    assert baton.calls == ["pass", "time 3", "pass", "block 5"]
    assert "lockstep A/B round" in timer.description and timer.name == "t"


def test_interference_counts_only_the_workers_own_turns(monkeypatch):
    """Scripted /proc/stat and own CPU readings: in the worker's turns the machine's busy
    time is all its own; in the partner's turn (baton given away) the machine is busy with
    the partner. Watched whole, that is 50% others (contended); turn by turn, none."""
    stats = iter([(0, 0, 0), (200, 0, 200),        # own turn 1: 2 s busy, all own
                  (400, 0, 400),                    # partner's turn: not watched
                  (400, 0, 400), (600, 0, 600)])   # own turn 2
    own = iter([0.0, 2.0, 2.0, 4.0])
    monkeypatch.setattr(interference_module, "_proc_stat", lambda: next(stats))
    monkeypatch.setattr(InterferenceProbe, "_own", lambda self: next(own))
    monkeypatch.setattr(interference_module.os, "sysconf", lambda name: 100)
    probe = InterferenceProbe(threads=2, threshold=0.10)
    with probe:
        probe.on_turn(False)
        next(stats)  # the partner's turn moves the machine's counters
        probe.on_turn(True)
    assert probe.result is not None and not probe.result.contended
    assert probe.result.others_cpu_s == 0 and probe.result.own_cpu_s == 4.0

    whole = interference_module.interference((0, 0, 0), (600, 0, 600), 4.0, 6.0, 2, 2, 0.10)
    assert whole is not None and whole.contended  # what a whole-window probe would say


def test_lockstep_only_where_both_sides_can_take_the_baton(tmp_path, write_suite):
    from bench.orchestrate.plan import plan_suite
    from bench.spec import load_suite

    suite = write_suite('[[benchmark]]\nworkload = "linreg"\nphase = "train"\n'
                        'matrix = { device = ["cpu"], batch_size = [32] }\n')
    (case,) = plan_suite(load_suite(suite))
    here = WorkerCode.this_checkout()
    old = tmp_path / "old"
    (old / "bench" / "runners").mkdir(parents=True)
    (old / "bench" / "runners" / "worker.py").write_text("")
    assert supports_baton(ROOT) and not supports_baton(old)
    spec = case.spec
    forked, spawned = LocalLauncher(here), LocalLauncher(here, fork=False)
    older = LocalLauncher(WorkerCode(old, {}))
    assert lockstep_possible([Arm("a", spec, forked), Arm("b", spec, forked)])
    assert not lockstep_possible([Arm("a", spec, older), Arm("b", spec, forked)])
    assert not lockstep_possible([Arm("a", spec, spawned), Arm("b", spec, forked)])
    assert not lockstep_possible([Arm("a", spec, forked), Arm("b", spec, forked),
                                  Arm("c", spec, forked)])
    # A generation case's mode holds the baton through each call: no turns to take.
    generating = dataclasses.replace(spec, phase="generate")
    assert not lockstep_possible([Arm("a", generating, forked), Arm("b", generating, forked)])


@pytest.mark.slow
def test_a_lockstep_ab_round_times_both_sides_in_turns(write_suite, tmp_path):
    """Real workers of this checkout on both sides: each round runs them at once, both
    are measured (any measured status: the host may be busy), and each took several
    turns of the baton; the record says how rounds ran."""
    suite = write_suite(ROUND_BUDGET + '[[benchmark]]\nworkload = "linreg"\nphase = "train"\n'
                        'params = { epochs = 2 }\n'
                        'matrix = { device = ["cpu"], batch_size = [32] }\n')
    here = WorkerCode.this_checkout()
    records = run_interleaved(suite, [Side("baseline", here), Side("current", here)],
                              Stopping(rounds=2, max_rounds=2), tmp_path)
    for record in records:
        (merged,) = record.cases
        assert merged.measured, merged.reason
        baton = merged.details["baton"]
        # the first turn, then one per timed block: cold step, warm-up, 4 trials
        assert baton["turns"] >= 6
        assert "at once" in record.run.pairing["order"]


def test_a_running_thread_of_the_process_is_seen_and_its_end_too():
    """A thread computing outside the GIL (numpy) is seen running at some moment, and
    once it has ended no other thread is (eventually: a thread that waits for the GIL
    reads as sleeping, so each is polled for, with a generous deadline)."""
    import threading

    import numpy as np

    from bench.measurement.baton import _other_threads_running

    stop = threading.Event()
    a = np.random.default_rng(0).random((300, 300))

    def spin() -> None:
        while not stop.is_set():
            a @ a

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        assert _eventually(_other_threads_running)
    finally:
        stop.set()
        thread.join()
    assert _eventually(lambda: not _other_threads_running())


def _eventually(check, within_s: float = 30.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.001)
    return False


def test_settle_waits_until_no_other_thread_runs_and_counts_it_as_waiting(monkeypatch):
    from bench.measurement import baton as baton_module

    states = iter([True, True, True, False])
    monkeypatch.setattr(baton_module, "_other_threads_running", lambda: next(states))
    baton = baton_module.Baton.__new__(baton_module.Baton)
    baton.settled_s = baton.waited_s = 0.0
    baton.settle(poll_s=0.01)
    assert next(states, "spent") == "spent"  # polled until the first idle reading
    assert baton.settled_s >= 0.03 and baton.waited_s == baton.settled_s
    # A thread that never stops: settle gives up at its limit.
    monkeypatch.setattr(baton_module, "_other_threads_running", lambda: True)
    baton.settle(poll_s=0.001, limit_s=0.05)
    assert baton.settled_s >= 0.08


def test_every_pass_over_the_cases_forks_from_fresh_servers(write_suite, tmp_path,
                                                             monkeypatch):
    """A fork server's children share its memory layout; the session closes the servers
    before every pass after the first, so no side keeps one layout for all its rounds."""
    from bench.launch.fork_server import ForkServers

    closed = []
    real_close = ForkServers.close

    def counting_close(self):  # noqa: ANN001, ANN202
        closed.append(len(self._servers))
        real_close(self)

    monkeypatch.setattr(ForkServers, "close", counting_close)
    monkeypatch.setattr(LocalLauncher, "run_once",
                        lambda self, spec, *a, **k: _fake_result(spec))
    suite = write_suite('[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n')
    here = WorkerCode.this_checkout()
    run_interleaved(suite, [Side("baseline", here), Side("current", here)],
                    Stopping(rounds=3, max_rounds=3), tmp_path, lockstep=False)
    # Each side's launcher closes its servers before passes 2 and 3, and at the end.
    assert len(closed) == 2 * 3
    closed.clear()
    run_interleaved(suite, [Side("baseline", here), Side("current", here)],
                    Stopping(rounds=3, max_rounds=3), tmp_path / "kept", lockstep=False,
                    fresh_servers=False)
    assert len(closed) == 2  # at the end only


def _fake_result(spec):  # noqa: ANN001, ANN202
    from bench.results.schema import ThroughputResult
    from tests.builders import case, trials

    result = case(spec.case_id, trials(0.01, n=5))
    result.throughput = ThroughputResult.from_timing(result.timing, 1, "samples/s")
    return result
