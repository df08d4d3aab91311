"""Interference: did other processes take CPU while a case was timed?

A busy neighbour on a small machine slows a case without making it noisy: with a spinning
process beside it, a case can run 8x slower at a CV of 1% (issue 11). So the worker reads,
around the timed phase, the machine's CPU time from /proc/stat and its own (the worker,
its children, and the sweep process that started it, through psutil):

    others_share = (busy jiffies of the machine - own CPU time - steal) / all jiffies
    steal_share  = steal jiffies / all jiffies   (a hypervisor running other guests)

both as fractions of the whole machine's capacity over the timed wall time. The counters
tick at 100 Hz per CPU, so a short window carries a rounding error of a few jiffies: the
verdict first discounts ``2 x cores + 2`` jiffies from the others' time. Above
``CONTENDED_SHARE`` the case is marked ``contended``: its figures are kept and shown, and
the gate judges its times only in the direction contention cannot fake (a pass of a slowed
current run, a regression against a slowed baseline; bench.reports.gate). The worker's
own CPU time per thread (own CPU / (wall x threads)) is recorded beside them.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import psutil

from bench.results.schema import InterferenceResult

# 10% of the machine: an idle 2-core VM shows 0-2% from daemons; one process spinning at
# the lowest priority beside a case took 40-90%.
CONTENDED_SHARE = 0.10
METHOD = ("/proc/stat jiffies around the timed phase: others = machine busy (user, nice, "
          "system, irq, softirq) - own CPU (worker, its children and the sweep process, "
          "psutil) ; steal apart; both over all jiffies (busy + idle + iowait + steal); the "
          "verdict discounts 2 x cores + 2 jiffies of counter rounding")


def _proc_stat() -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies of the whole machine, or None without /proc/stat."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in line[1:9]] + [0] * max(0, 9 - len(line))
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def _cpu_seconds(process: psutil.Process, with_children: bool) -> float:
    with contextlib.suppress(psutil.Error):
        t = process.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        if with_children:
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
        return total
    return 0.0


def interference(start: tuple[int, int, int], end: tuple[int, int, int], own_cpu_s: float,
                 wall_s: float, cores: int, threads: int, threshold: float,
                 hz: int = 100) -> InterferenceResult | None:
    """The verdict from two /proc/stat readings (busy, steal, total jiffies) around a timed
    region and the CPU seconds this case used in it; None when no jiffy passed."""
    busy, steal, total = (b - a for a, b in zip(start, end, strict=True))
    if total <= 0:
        return None
    others = max(0.0, busy / hz - own_cpu_s)
    slack = 2 * cores + 2  # jiffies of rounding in the machine's and our counters
    beyond_rounding = max(0.0, others * hz - slack) / total
    return InterferenceResult(
        wall_s=wall_s, cores=cores, own_cpu_s=own_cpu_s, others_cpu_s=others,
        others_share=min(1.0, others * hz / total), steal_share=steal / total,
        own_cpu_per_thread=own_cpu_s / (wall_s * threads) if wall_s > 0 else None,
        threads=threads,
        contended=beyond_rounding > threshold or max(0, steal - slack) / total > threshold,
        threshold=threshold, method=METHOD)


class InterferenceProbe:
    """Context manager around the timed phase; ``result`` holds what it saw.

    The case's own CPU is ``root``'s and its children's (every process of the case: a
    worker and what it started; a rank's launcher and all its ranks) and that of
    ``root``'s parent (the sweep). ``root`` is this process unless given."""

    def __init__(self, threads: int, threshold: float = CONTENDED_SHARE,
                 root: psutil.Process | None = None) -> None:
        self.threads = max(1, threads)
        self.threshold = threshold
        self.result: InterferenceResult | None = None
        self._me = root or psutil.Process()
        try:
            self._parent: psutil.Process | None = self._me.parent()
        except psutil.Error:
            self._parent = None

    def _own(self) -> float:
        own = _cpu_seconds(self._me, with_children=True)
        if self._parent is not None:
            own += _cpu_seconds(self._parent, with_children=False)
        return own

    def __enter__(self) -> InterferenceProbe:
        self._segments: list[tuple[tuple[int, ...], float, float]] = []
        self._unreadable = False
        self._begin()
        return self

    def _begin(self) -> None:
        self._stat = _proc_stat()
        self._own_start = self._own()
        self._wall = time.perf_counter()

    def _end(self) -> None:
        wall = time.perf_counter() - self._wall
        own = self._own() - self._own_start
        end = _proc_stat()
        if self._stat is None or end is None:
            self._unreadable = True
            return
        self._segments.append((tuple(b - a for a, b in zip(self._stat, end, strict=True)),
                               own, wall))

    def on_turn(self, holding: bool) -> None:
        """A baton listener (bench.measurement.baton): only the worker's own turns are
        watched, not the partner's, which this worker waits through."""
        if holding:
            self._begin()
        else:
            self._end()

    def __exit__(self, *exc: object) -> None:
        self._end()
        if self._unreadable or not self._segments:
            return
        deltas = [s[0] for s in self._segments]
        summed = tuple(sum(d[i] for d in deltas) for i in range(3))
        self.result = interference((0, 0, 0), summed, sum(s[1] for s in self._segments),
                                   sum(s[2] for s in self._segments),
                                   psutil.cpu_count(logical=True) or 1, self.threads,
                                   self.threshold, os.sysconf("SC_CLK_TCK"))

    def reason(self) -> str:
        assert self.result is not None
        return contention_reason(self.result)


def contention_reason(r: InterferenceResult) -> str:
    """Why a case was marked contended, in one line."""
    return (f"other processes used {r.others_share:.0%} of the machine's CPU "
            f"({r.others_cpu_s:.2f} CPU-s over {r.wall_s:.2f} s on {r.cores} cores), "
            f"steal {r.steal_share:.0%} (contended above {r.threshold:.0%})")
