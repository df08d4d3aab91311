"""The baton: the two sides of an A/B round run at once and take turns, block by block.

On a shared VM the host's speed moves in stretches shorter than a worker's measurement:
on the 2-core AVX2 EPYC, a 2-thread CNN forward timed in 0.2 s blocks in one process
varies 10% (CV) block to block, yet two adjacent blocks differ by 4% (SD of their log
ratio) and blocks 1.6 s apart by 13% (results/runs/noise-proof-cpu-avx2-epyc-2core.md).
A round that runs one side's worker after the other pairs two measurements seconds apart
and inherits the 13%. So in a lockstep round both workers start together and hold a
baton in turn: a worker runs only while it holds the baton (its start-up, every timed
block of steps, its task metrics) and hands it over before each block of steps it times,
so the two sides' trials alternate a fraction of a second apart over the same stretch of
host time, and neither is timed while the other works.

The baton is a pair of named pipes, one per side, that the parent (bench.orchestrate.
rounds) creates and holds open for the session: a worker waits for a byte on its own
pipe and passes the turn by writing one to the other's. A worker whose partner has ended
reads ``DONE`` (the parent writes it when the partner's process ends, however it ended)
and waits no more. Time spent waiting is kept apart (``held_clock``), so the sampler's
time budget and the interference probe count only the worker's own turns.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # bench.measurement.timers imports torch; bench ab's parent never needs it
    from bench.measurement.timers import Step, Timer

BATON_ENV = "BENCH_BATON"
TURN, DONE = b"T", b"D"
DESCRIPTION = ("lockstep A/B round: both sides' workers at once, passing a baton (named "
               "pipes) before each block of timed steps, so the two sides' trials alternate "
               "and neither is timed while the other runs (bench.measurement.baton)")


class Baton:
    """One worker's end: ``take`` blocks until this worker's turn (or the partner has
    ended), ``give`` passes the turn. ``listeners`` are called with False just before the
    turn is given and with True just after it is taken back."""

    def __init__(self, mine: str | Path, theirs: str | Path) -> None:
        # O_RDWR: opening a named pipe so never blocks waiting for the other end.
        self._mine = os.open(mine, os.O_RDWR)
        self._theirs = os.open(theirs, os.O_RDWR)
        self.partner_done = False
        self.turns = 0
        self.waited_s = 0.0
        self.settled_s = 0.0  # of waited_s: letting this process's idle threads stop spinning
        self.listeners: list[Callable[[bool], None]] = []

    def take(self) -> None:
        if self.partner_done:
            return
        started = time.perf_counter()
        got = os.read(self._mine, 1)
        self.waited_s += time.perf_counter() - started
        if got == DONE or not got:
            self.partner_done = True
        self.turns += 1

    def give(self) -> None:
        if not self.partner_done:
            os.write(self._theirs, TURN)

    def pass_turn(self) -> None:
        """Let the partner run one turn, then carry on."""
        if self.partner_done:
            return
        for listener in self.listeners:
            listener(False)
        self.settle()
        self.give()
        self.take()
        for listener in self.listeners:
            listener(True)

    def settle(self, poll_s: float = 0.0005, limit_s: float = 0.2) -> None:
        """Wait until this process's other threads are idle before handing over: after a
        parallel region libgomp's idle threads spin on for 12-16 ms (measured here after
        2-thread convolutions and matmuls), which would take a core from the partner in
        the first milliseconds of every block it times (the partner then read 3-11% of
        the machine used by others; with OMP_WAIT_POLICY=PASSIVE, 0-3%). Polls the state
        of this process's threads (/proc/self/task/*/stat) until none but this one is
        running. The wait counts as waiting, not as the worker's own time."""
        started = time.perf_counter()
        while _other_threads_running() and time.perf_counter() - started < limit_s:
            time.sleep(poll_s)
        settled = time.perf_counter() - started
        self.settled_s += settled
        self.waited_s += settled

    def held_clock(self) -> float:
        """``time.perf_counter`` less the time spent waiting for the baton."""
        return time.perf_counter() - self.waited_s

    def figures(self) -> dict[str, object]:
        return {"turns": self.turns, "waited_s": round(self.waited_s, 4),
                "settled_s": round(self.settled_s, 4),
                "partner_ended_first": self.partner_done, "method": DESCRIPTION}


def _other_threads_running() -> bool:
    """Whether a thread of this process other than the calling one is running (state R);
    False where /proc cannot say."""
    me = threading.get_native_id()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    for task in tasks:
        if task == str(me):
            continue
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "R":
            return True
    return False


_current: Baton | None = None


def take_from_env() -> Baton | None:
    """In a worker: the baton the parent passed in ``BENCH_BATON`` ("MINE:THEIRS"), taken
    (this blocks until the worker's first turn). The variable is removed, so processes the
    worker starts (ranks, exporters) never wait on it."""
    global _current
    value = os.environ.pop(BATON_ENV, "")
    if not value:
        return None
    mine, theirs = value.split(os.pathsep)
    _current = Baton(mine, theirs)
    _current.take()
    return _current


def current() -> Baton | None:
    return _current


class BatonTimer:
    """``inner``, passing the baton before each block of steps it times."""

    def __init__(self, inner: Timer, baton: Baton) -> None:
        self.inner, self.baton = inner, baton
        self.name = inner.name
        self.description = f"{inner.description}; {DESCRIPTION}"
        self.per_iteration_costs_host_time = inner.per_iteration_costs_host_time

    def time_iterations(self, step: Step, iterations: int) -> list[float]:
        self.baton.pass_turn()
        return self.inner.time_iterations(step, iterations)

    def time_block(self, step: Step, iterations: int) -> float:
        self.baton.pass_turn()
        return self.inner.time_block(step, iterations)


class BatonPair:
    """The parent's side: two named pipes in a private directory, held open for the
    session (a named pipe's bytes live only while someone holds it open). ``env(s)`` is
    side ``s``'s worker environment; ``begin(first)`` clears the pipes and gives side
    ``first`` the first turn; ``ended(s)`` tells the other side that ``s`` has ended."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-baton-"))
        self.paths = [self.dir / "0", self.dir / "1"]
        for path in self.paths:
            os.mkfifo(path, 0o600)
        self._fds = [os.open(path, os.O_RDWR | os.O_NONBLOCK) for path in self.paths]

    def env(self, side: int) -> dict[str, str]:
        return {BATON_ENV: f"{self.paths[side]}{os.pathsep}{self.paths[1 - side]}"}

    def begin(self, first: int) -> None:
        for fd in self._fds:
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 4096):
                    pass
        os.write(self._fds[first], TURN)

    def ended(self, side: int) -> None:
        os.write(self._fds[1 - side], DONE)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for path in self.paths:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


@contextlib.contextmanager
def baton_pair() -> Iterator[BatonPair]:
    pair = BatonPair()
    try:
        yield pair
    finally:
        pair.close()


def supports_baton(checkout: str | Path) -> bool:
    """Whether a checkout's workers take the baton (older commits run sequential rounds)."""
    return (Path(checkout) / "bench" / "measurement" / "baton.py").is_file()
