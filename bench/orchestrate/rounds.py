"""Paired rounds: the one round runner of ``bench ab`` and ``bench run --paired-rounds``.

On a shared machine the speed of a whole run drifts by several percent between runs
minutes apart, which no number of trials inside one run can tell from a code change. So a
comparison is measured in rounds: in every round each of its arms (two checkouts of one
case for ``bench ab``; a variant and its parity reference for ``--paired-rounds``) runs in
its own fresh worker process, back to back, the order alternating from round to round and
comparison to comparison (ABBA...), so drift within a round is seconds, not minutes, and
linear drift cancels over the rounds. Each round's medians form one paired sample
(bench.measurement.stats.paired_ratio).

A round in which an arm was timed under contention is left out of the pairing and the
comparison runs on until it has its clean rounds (up to as many left out as it may keep).
A comparison stops at its first failure, or when ``Stopping`` says its rounds decide.
Each arm's record is its kept rounds merged, their medians in the typed ``rounds`` field
that the gate pairs round by round.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bench.errors import BenchInputError
from bench.launch.launcher import Launcher, LocalLauncher
from bench.launch.merge import merge_process_results
from bench.measurement.baton import BatonPair, supports_baton
from bench.measurement.sequential import SequentialTest
from bench.measurement.stats import needs_another_round
from bench.results.schema import STATUS_CONTENDED, CaseResult, RoundsResult
from bench.spec.model import CLOSED_LOOP, CaseSpec, is_distributed

# bench ab's defaults (the CLI reads them here). Under the sequential test (the gate
# policy's default): a first look after 3 rounds, at most 40. Without it: 6 rounds at
# least, up to 16 while a case's paired CI is wider than +-4% (log scale).
DEFAULT_ROUNDS = 6
DEFAULT_MAX_ROUNDS = 16
DEFAULT_TARGET_HALF_WIDTH = 0.04
SEQUENTIAL_MAX_ROUNDS = 40
# How many of a comparison's left-out rounds its record names.
REASONS_KEPT = 5


@dataclass(frozen=True)
class Stopping:
    """When a comparison has had enough rounds. With ``test`` (the gate's sequential test),
    once every adjacent pair of arms is decided (regression or no regression) or at
    ``max_rounds``; without, once the paired CI is within ``target_half_width`` or at
    ``max_rounds`` (``rounds == max_rounds``: a fixed number). ``time_budget_s``: no round
    starts after the session has run this long (undecided cases are inconclusive)."""

    rounds: int = DEFAULT_ROUNDS
    max_rounds: int = DEFAULT_MAX_ROUNDS
    target_half_width: float = DEFAULT_TARGET_HALF_WIDTH
    test: SequentialTest | None = None
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        least = self.test.min_rounds if self.test else 2
        if self.rounds < 2:
            raise BenchInputError("--rounds", f"{self.rounds} is too few to test paired rounds",
                                  valid="an integer >= 2 (5 or more to detect 10%)")
        if self.max_rounds < max(self.rounds, least):
            raise BenchInputError("--max-rounds", f"{self.max_rounds} is below "
                                  f"{max(self.rounds, least)} rounds",
                                  valid=f"an integer >= {max(self.rounds, least)}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise BenchInputError("--time-budget", f"{self.time_budget_s!r} is not a positive "
                                  "number of seconds")

    @classmethod
    def fixed(cls, rounds: int) -> Stopping:
        return cls(rounds=rounds, max_rounds=rounds)

    def needs_another_round(self, rounds_per_arm: list[list[float]]) -> bool:
        if self.test is None:
            return needs_another_round(rounds_per_arm, self.rounds, self.max_rounds,
                                       self.target_half_width)
        done = min(len(r) for r in rounds_per_arm)
        if done < max(self.rounds, self.test.min_rounds):
            return True
        if done >= self.max_rounds:
            return False
        return any(self.test.decide(np.log(np.asarray(b[:done]) / np.asarray(a[:done])))
                   is None for a, b in zip(rounds_per_arm, rounds_per_arm[1:], strict=False))

    def max_left_out(self) -> int:
        """Contended rounds a comparison may leave out before it stops with what it has: as
        many as the rounds it may keep (a host busy half the time still reaches
        max_rounds)."""
        return self.max_rounds

    def describe(self) -> dict[str, object]:
        rule = self.test.describe() if self.test else \
            f"until the paired CI is within +-{self.target_half_width:g} (log scale)"
        return {"rounds": self.rounds, "max_rounds": self.max_rounds,
                "target_half_width": None if self.test else self.target_half_width,
                "stopping": rule, "time_budget_s": self.time_budget_s}


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison: ``spec``, its workers started by ``launcher`` (which
    holds the checkout they import: bench ab's two sides have a launcher each)."""

    name: str
    spec: CaseSpec
    launcher: Launcher


@dataclass
class Comparison:
    """One comparison measured in rounds: its arms, and each arm's results of the rounds
    kept and of those left out (with why)."""

    key: str
    arms: list[Arm]
    kept: list[list[CaseResult]] = field(init=False)
    left_out: list[list[CaseResult]] = field(init=False)
    left_out_reasons: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.kept = [[] for _ in self.arms]
        self.left_out = [[] for _ in self.arms]

    def medians(self) -> list[list[float]]:
        """Each arm's kept rounds' medians, in run order."""
        return [[r.timing.median_s for r in per_arm] for per_arm in self.kept]

    def failure(self) -> CaseResult | None:
        """The first round result that ended without figures (it stops the comparison)."""
        return next((r for per_arm in self.kept + self.left_out for r in per_arm
                     if not r.measured), None)

    def add(self, results: list[CaseResult]) -> None:
        """One round's results, one per arm: kept, or left out when an arm was timed under
        contention (the other arm, run moments apart, is then no fair partner for it)."""
        why = "; ".join(f"{arm.name}: {result.reason}" for arm, result
                        in zip(self.arms, results, strict=True)
                        if result.status == STATUS_CONTENDED)
        into = self.left_out if why else self.kept
        if why:
            self.left_out_reasons.append(why)
        for per_arm, result in zip(into, results, strict=True):
            per_arm.append(result)

    def needs_another_round(self, stopping: Stopping) -> bool:
        """Stops at the first failure (any arm), when its kept rounds suffice, or when it
        has left out as many contended rounds as it may."""
        if self.failure() is not None:
            return False
        if len(self.left_out[0]) >= stopping.max_left_out():
            return False
        if not self.kept[0]:
            return True
        return stopping.needs_another_round(self.medians())

    def merged(self, arm: int) -> CaseResult:
        """One arm's record: its kept rounds merged (each round's median in ``rounds``,
        the rounds the gate pairs), saying how many contended rounds were left out and
        why. With no kept round at all, the contended ones stand, marked contended: the
        gate then judges them one way only."""
        kept, left_out = self.kept[arm], self.left_out[arm]
        merged = merge_process_results(kept or left_out)
        if merged.measured:
            merged.rounds = RoundsResult(
                [r.timing.median_s for r in kept or left_out],
                left_out=len(left_out) if kept else 0,
                left_out_reasons=self.left_out_reasons[:REASONS_KEPT] if kept else [])
        return merged


def round_order(round_index: int, comparison_index: int, arms: int = 2) -> list[int]:
    """The arms' running order in one round of one comparison: forward and reversed in
    turn, alternating over rounds and over comparisons within a round (ABBA...). An arm
    in the middle of three runs next to both others in every round."""
    forward = list(range(arms))
    return forward if (round_index + comparison_index) % 2 == 0 else forward[::-1]


def lockstep_possible(arms: list[Arm]) -> bool:
    """Whether a comparison's rounds can run both arms at once (bench.measurement.baton):
    two arms, both forked CPU workers (a spawned worker's imports would run during the
    other's turn), both checkouts new enough to take the baton, and a case timed by the
    sampler (its mode takes the baton: serving, generation and time-to-target cases would
    hold it throughout, no gain)."""
    return len(arms) == 2 and all(
        isinstance(arm.launcher, LocalLauncher) and arm.launcher.fork
        and supports_baton(arm.launcher.code.source) and arm.spec.device == "cpu"
        and arm.spec.training is None and not is_distributed(arm.spec)
        and arm.spec.scenario == CLOSED_LOOP and _takes_baton(arm.spec)
        for arm in arms)


def _takes_baton(spec: CaseSpec) -> bool:
    """Whether the mode that runs ``spec`` takes turns (a mode this environment lacks,
    named by a suite for a plugin's worker, is taken not to)."""
    # The modes import torch and the workloads: a reader of results (bench gate) must not.
    from bench.modes import mode_for

    try:
        return mode_for(spec).takes_baton
    except LookupError:
        return False


@dataclass(frozen=True)
class Lockstep:
    """What lockstep rounds share over a session: the baton's pipes, and one thread per
    arm that lives as long as the session (a fork server dies with the thread that
    started it: bench.launch.fork_server.die_with_parent)."""

    batons: BatonPair
    threads: ThreadPoolExecutor


class RoundRunner:
    """Runs comparisons in rounds until ``stopping`` says each has enough: round-major
    (every comparison's round r before any round r+1), so a session cut short has
    rounds of every comparison. Each arm's workers start through its launcher; with
    ``lockstep``, the two arms of a round run at once wherever the case allows
    (``lockstep_possible``). ``fresh_servers``: the launchers start later workers from
    fresh fork servers after every pass over the comparisons."""

    def __init__(self, stopping: Stopping, lockstep: Lockstep | None = None,
                 progress: Callable[[str], None] | None = None,
                 fresh_servers: bool = True) -> None:
        self.stopping = stopping
        self.lockstep = lockstep
        self.progress = progress
        self.fresh_servers = fresh_servers

    def run(self, comparisons: list[Comparison],
            after_pass: Callable[[], None] | None = None) -> None:
        """Every comparison's rounds; ``after_pass`` after each pass over them (to write
        what they have so far)."""
        pending = {c.key for c in comparisons}
        deadline = None if self.stopping.time_budget_s is None else \
            time.monotonic() + self.stopping.time_budget_s
        for r in range(self.stopping.max_rounds + self.stopping.max_left_out()):
            if r and self.fresh_servers:
                # Fresh fork servers for every pass: a server's children share its memory
                # layout (ASLR is drawn once, at its start), so one server per side for a
                # whole session can hold one side a few percent off in every round (an
                # unchanged lockstep A/B once read x0.966 over 12 rounds of one case).
                for launcher in {id(a.launcher): a.launcher for c in comparisons
                                 for a in c.arms}.values():
                    launcher.refresh()
            for i, comparison in enumerate(comparisons):
                if comparison.key not in pending:
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    pending.clear()
                    break
                comparison.add(self.run_round(comparison, round_order(r, i, len(
                    comparison.arms))))
            pending = {c.key for c in comparisons if c.key in pending
                       and c.needs_another_round(self.stopping)}
            if after_pass is not None:
                after_pass()
            if not pending:
                break

    def run_round(self, comparison: Comparison, order: list[int]) -> list[CaseResult]:
        """One round: each arm's worker in ``order``, or (lockstep) both at once taking
        turns, ``order[0]`` first. Results come back in the arms' order. Rounds after the
        first kept one only time: the task metrics, export checks and FLOP count of that
        round stand for the session (merging keeps the first's), and the timed region is
        the same either way (it ends before any of them)."""
        done = len(comparison.kept[0])
        specs = [arm.spec if done == 0 else dataclasses.replace(arm.spec, probe=True)
                 for arm in comparison.arms]
        if (lockstep := self._lockstep_for(comparison)) is not None:
            self._say(done, " + ".join(comparison.arms[a].name for a in order), comparison)
            return self._lockstep_round(comparison.arms, specs, order, lockstep)
        results: list[CaseResult | None] = [None] * len(comparison.arms)
        for a in order:
            arm = comparison.arms[a]
            self._say(done, arm.name, comparison)
            results[a] = arm.launcher.run_once(specs[a])
        return results  # type: ignore[return-value]

    def _say(self, done: int, names: str, comparison: Comparison) -> None:
        if self.progress:
            # Past --rounds a comparison is getting extra rounds (its CI is still wide).
            of = f"/{self.stopping.rounds}" if done < self.stopping.rounds else " (extra)"
            self.progress(f"round {done + 1}{of} {names}: {comparison.key}")

    def _lockstep_for(self, comparison: Comparison) -> Lockstep | None:
        return self.lockstep if lockstep_possible(comparison.arms) else None

    def _lockstep_round(self, arms: list[Arm], specs: list[CaseSpec], order: list[int],
                        lockstep: Lockstep) -> list[CaseResult]:
        """Both arms' workers at once, passing the baton; each arm's ending (however it
        ends) is passed to the other, which then runs on alone."""
        batons = lockstep.batons
        batons.begin(order[0])

        def run(a: int) -> CaseResult:
            try:
                # Each arm's watchdog allows for the partner's turns in its wall time.
                return arms[a].launcher.run_once(specs[a], batons.env(a),
                                                 timeout_scale=len(arms))
            finally:
                batons.ended(a)

        futures = {a: lockstep.threads.submit(run, a) for a in order}
        return [futures[a].result() for a in range(len(arms))]
