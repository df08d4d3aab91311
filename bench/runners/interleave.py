"""Interleaved A/B: a suite run for two versions of the code, alternating, case by case.

On a shared machine the speed of a whole run drifts by several percent between runs
minutes apart (results/runs/gate-quality-cpu-epyc-2core.txt: unchanged runs at 0.97-1.08
of the first), which no number of trials inside one run can tell from a code change. So
each case is measured in rounds: in every round one worker process per side runs back to
back, the order alternating from round to round and case to case (ABBA...), so drift
within a pair is seconds, not minutes, and linear drift cancels over the rounds. The
gate tests the rounds' paired ratios (bench.measurement.stats.paired_ratio), and a case
stops as soon as they decide (``Stopping``: the gate policy's sequential test,
bench.measurement.sequential). CPU workers are forked per round from a fork server of
their side's code (bench.runners.fork_server), so a round costs its measurement, not
the imports.

Each side is a :class:`WorkerCode`: the checkout whose ``bench`` package the worker
imports and extra environment variables. The cases come from the suite as this checkout
reads it, so a baseline that cannot run a case shows that case failing on its side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import BenchInputError
from bench.measurement.baton import BatonPair, baton_pair, supports_baton
from bench.measurement.fingerprint import fingerprint, git_state
from bench.measurement.sequential import SequentialTest
from bench.measurement.stats import needs_another_round
from bench.results.schema import (
    AB_UNMEASURED_KEY,
    INSTRUCTIONS_KEY,
    PROCESS_MEDIANS_KEY,
    STATUS_CONTENDED,
    STATUS_SKIPPED,
    CaseResult,
    RunRecord,
)
from bench.results.store import exclusive_output, write_atomically
from bench.runners.fork_server import DYNAMO, ForkServers
from bench.runners.isolation import WorkerCode, run_isolated
from bench.runners.merge import merge_process_results
from bench.runners.plan import plan_suite, skipped_result
from bench.runners.sweep import new_run_info
from bench.spec import load_suite
from bench.spec.model import CLOSED_LOOP, is_distributed


@dataclass(frozen=True)
class Side:
    name: str
    code: WorkerCode
    # CPU workers forked from a per-side fork server (bench.runners.fork_server) rather
    # than spawned: the same worker code, without paying its imports every round.
    fork: bool = True

    def describe(self) -> dict[str, object]:
        return {"side": self.name, "source": str(Path(self.code.source).resolve()),
                "commit": git_commit(self.code.source), "env": dict(self.code.env),
                "workers": WORKER_START[self.fork]}


ROUND_ORDER = {
    True: "one process per side per round; where both sides can (two forked CPU sides, a "
          "sampled case, a baseline that has bench.measurement.baton) the two run at once "
          "and pass a baton before each timed block, so their trials alternate; otherwise "
          "one after the other, forward and reversed in turn over rounds and cases",
    False: "one process per side per round, one after the other, forward and reversed in "
           "turn over rounds and cases",
}

WORKER_START = {
    True: "CPU workers forked, one per round, from a fork server of this side's code that "
          "imported torch and the worker once (bench.runners.fork_server), started afresh "
          "for every pass over the cases; others spawned",
    False: "every worker spawned (a fresh interpreter per round)",
}


def git_commit(path: Path) -> str | None:
    """The commit checked out at ``path`` (with "-dirty" for uncommitted changes)."""
    state = git_state(path)
    if state["commit"] is None:
        return None
    return state["commit"] + ("-dirty" if state["dirty"] else "")


def resolve_commit(ref: str, repo: Path) -> str:
    """The commit ``ref`` names in ``repo``; one line for anything else. ``ref`` is never
    read as an option (``--end-of-options``), so ``--lock`` is a ref that does not exist."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                               "--end-of-options", f"{ref}^{{commit}}"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchInputError("--baseline-ref", f"cannot run git: {exc}") from None
    commit = proc.stdout.strip()
    if proc.returncode != 0 or len(commit) < 40:
        raise BenchInputError("--baseline-ref", f"{ref!r} is not a commit of {repo}",
                              valid="a branch, tag or commit (e.g. main, HEAD~1)")
    return commit


def has_bench_package(tree: Path) -> bool:
    return (tree / "bench" / "runners" / "worker.py").is_file()


@contextlib.contextmanager
def git_worktree(ref: str, repo: Path) -> Iterator[Path]:
    """A detached checkout of ``ref`` in a temporary directory, removed afterwards; it
    must hold the bench package (else its workers would import another checkout's)."""
    commit = resolve_commit(ref, repo)
    parent = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    tree = parent / "src"
    proc = subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach",
                           "--end-of-options", str(tree), commit],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
        last = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
        raise BenchInputError("--baseline-ref", f"cannot check out {ref!r}: {last}")
    try:
        if not has_bench_package(tree):
            raise BenchInputError("--baseline-ref", f"commit {commit[:12]} ({ref}) holds no "
                                  "bench package (bench/runners/worker.py): nothing to "
                                  "measure as the baseline")
        yield tree
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


def round_order(round_index: int, case_index: int, sides: int = 2) -> list[int]:
    """The sides' running order in one round of one case: forward and reversed in turn,
    alternating over rounds and over cases within a round (ABBA...). A side in the middle
    of three runs next to both others in every round."""
    forward = list(range(sides))
    return forward if (round_index + case_index) % 2 == 0 else forward[::-1]


def _merged(results: list[CaseResult], dropped: list[CaseResult]) -> CaseResult:
    """One side's record of a case: its clean rounds merged (merge_process_results keeps
    each process's median in run order, PROCESS_MEDIANS_KEY: the rounds compare/gate pair),
    saying how many contended rounds were left out and why. With no clean round at all,
    the contended ones stand, marked contended: the gate then judges them one way only."""
    merged = merge_process_results(results or dropped)
    if merged.measured:
        # One round is not merged (merge_process_results returns it): its median alone.
        merged.details.setdefault(PROCESS_MEDIANS_KEY, [merged.timing.median_s])
        merged.details["ab_rounds"] = len(results or dropped)
        if results and dropped:
            merged.details["ab_dropped_rounds"] = len(dropped)
            merged.details["ab_dropped_reasons"] = [r.details["ab_left_out"]
                                                    for r in dropped[:5]]
    return merged


# bench ab's defaults (the CLI reads them here). Under the sequential test (the gate
# policy's default): a first look after 3 rounds, at most 40. Without it: 6 rounds at
# least, up to 16 while a case's paired CI is wider than +-4% (log scale).
DEFAULT_ROUNDS = 6
DEFAULT_MAX_ROUNDS = 16
DEFAULT_TARGET_HALF_WIDTH = 0.04
SEQUENTIAL_MAX_ROUNDS = 40


@dataclass(frozen=True)
class Stopping:
    """When a case has had enough rounds. With ``test`` (the gate's sequential test), once
    every adjacent pair of sides is decided (regression or no regression) or at
    ``max_rounds``; without, once the paired CI is within ``target_half_width`` or at
    ``max_rounds``. ``time_budget_s``: no round starts after the session has run this long
    (undecided cases are inconclusive at the gate)."""

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

    def needs_another_round(self, rounds_per_side: list[list[float]]) -> bool:
        if self.test is None:
            return needs_another_round(rounds_per_side, self.rounds, self.max_rounds,
                                       self.target_half_width)
        done = min(len(r) for r in rounds_per_side)
        if done < max(self.rounds, self.test.min_rounds):
            return True
        if done >= self.max_rounds:
            return False
        return any(self.test.decide(np.log(np.asarray(b[:done]) / np.asarray(a[:done])))
                   is None for a, b in zip(rounds_per_side, rounds_per_side[1:], strict=False))

    def describe(self) -> dict[str, object]:
        rule = self.test.describe() if self.test else \
            f"until the paired CI is within +-{self.target_half_width:g} (log scale)"
        return {"rounds": self.rounds, "max_rounds": self.max_rounds,
                "target_half_width": None if self.test else self.target_half_width,
                "stopping": rule, "time_budget_s": self.time_budget_s}


def run_interleaved(suite_path: str | Path, sides: list[Side], stopping: Stopping,
                    out_dir: str | Path, select: dict[str, set[str]] | None = None,
                    progress: Callable[[str], None] | None = None,
                    count_instructions: bool = False, lockstep: bool = True,
                    fresh_servers: bool = True) -> list[RunRecord]:
    """Measure every runnable case in rounds, interleaved, until ``stopping`` says it has
    enough; with ``lockstep``, the two sides of a round at once wherever the case allows
    (``lockstep_possible``). Writes OUT_DIR/SIDE.json for every side after every round, so
    a cut-short session keeps its finished rounds. With ``count_instructions``, each side's
    CPU cases then get one instruction count (bench.measurement.instructions;
    deterministic, so one per side suffices). ``fresh_servers``: new fork servers for every
    pass over the cases (about 3 s a pass here); without, one per side for the session."""
    if len({side.name for side in sides}) != len(sides):
        raise ValueError("side names must differ")
    suite = load_suite(suite_path)
    planned = plan_suite(suite, select)
    session = uuid.uuid4().hex[:12]
    machine = fingerprint(suite.path)
    pairing = {"session": session, **stopping.describe(), "order": ROUND_ORDER[lockstep]}
    records = [RunRecord(run=new_run_info(suite, select, f"{session}-{side.name}",
                                          pairing={**pairing, **side.describe()}),
                         fingerprint=machine) for side in sides]
    with contextlib.ExitStack() as stack:
        for side in sides:
            stack.enter_context(exclusive_output(Path(out_dir) / f"{side.name}.json"))
        servers = stack.enter_context(ForkServers(preload=(DYNAMO,)))
        lockstep_run = Lockstep(stack.enter_context(baton_pair()), stack.enter_context(
            ThreadPoolExecutor(len(sides), thread_name_prefix="ab-side"))) \
            if lockstep and len(sides) == 2 else None
        _rounds(sides, records, planned, stopping, out_dir, progress, servers, lockstep_run,
                fresh_servers)
        if count_instructions:
            _count_instructions(sides, records, planned, out_dir, progress)
    return records


def _count_instructions(sides: list[Side], records: list[RunRecord], planned: list,
                        out_dir: str | Path, progress: Callable[[str], None] | None) -> None:
    """One callgrind count per side of every measured CPU case, into its merged record."""
    for case in planned:
        if case.skip_reason or case.spec.device != "cpu":
            continue
        for side, record in zip(sides, records, strict=True):
            merged = record.case(case.case_id)
            if merged is None or merged.status != "ok":
                continue
            if progress:
                progress(f"instructions {side.name}: {case.case_id}")
            counted = run_isolated(dataclasses.replace(case.spec, probe=True,
                                                       count_instructions=True), side.code)
            if counted.status == "ok":
                merged.details[INSTRUCTIONS_KEY] = counted.details[INSTRUCTIONS_KEY]
                merged.details["instructions_method"] = counted.details["instructions_method"]
            else:
                merged.warnings.append(f"instruction count failed: {counted.status}: "
                                       f"{counted.reason}")
            write_atomically(Path(out_dir) / f"{side.name}.json", record.to_dict(),
                             "--out-dir")


def _rounds(sides: list[Side], records: list[RunRecord], planned: list, stopping: Stopping,
            out_dir: str | Path, progress: Callable[[str], None] | None,
            servers: ForkServers, lockstep: Lockstep | None = None,
            fresh_servers: bool = True) -> None:
    skipped = [skipped_result(p) for p in planned if p.skip_reason]
    runnable = [p for p in planned if not p.skip_reason]
    clean = {p.case_id: [[] for _ in sides] for p in runnable}
    # Round pairs in which a side was timed under contention: left out of the pairing.
    dropped = {p.case_id: [[] for _ in sides] for p in runnable}
    pending = {p.case_id for p in runnable}
    deadline = None if stopping.time_budget_s is None else \
        time.monotonic() + stopping.time_budget_s
    for r in range(stopping.max_rounds + max_dropped_rounds(stopping)):
        if r and fresh_servers:
            # Fresh fork servers for every pass over the cases: a server's children share
            # its memory layout (ASLR is drawn once, at its start), so one server per side
            # for the whole session can hold one side a few percent off in every round (an
            # unchanged lockstep A/B once read x0.966 over 12 rounds of one case).
            servers.close()
        for i, case in enumerate(runnable):
            if case.case_id not in pending:
                continue
            if deadline is not None and time.monotonic() > deadline:
                pending.clear()
                break
            done = len(clean[case.case_id][0])
            pair = _run_round(case, sides, round_order(r, i, len(sides)), done,
                              stopping.rounds, progress, servers,
                              lockstep if lockstep_possible(case, sides) else None)
            kept = clean[case.case_id]
            if why := _contended(pair, sides):
                kept = dropped[case.case_id]
                for result in pair:
                    result.details["ab_left_out"] = why
            for s, result in enumerate(pair):
                kept[s].append(result)
        pending = {cid for cid in pending if _needs_another_round(clean[cid], dropped[cid],
                                                                  stopping)}
        for s, record in enumerate(records):
            record.cases = [_merged(clean[p.case_id][s], dropped[p.case_id][s])
                            if clean[p.case_id][s] or dropped[p.case_id][s]
                            else _unmeasured(p) for p in runnable] + skipped
            write_atomically(Path(out_dir) / f"{sides[s].name}.json", record.to_dict(),
                             "--out-dir")
        if not pending:
            break


def _unmeasured(case) -> CaseResult:  # noqa: ANN001
    """A case no round of which ran (the time budget ran out first): skipped, and said so,
    so that the gate cannot pass a session that never measured it."""
    result = CaseResult.for_case(case.spec, STATUS_SKIPPED, "not measured: the session's "
                                 "time budget ran out before its first round")
    result.details[AB_UNMEASURED_KEY] = True
    return result


def max_dropped_rounds(stopping: Stopping) -> int:
    """Contended round pairs a case may leave out before it stops with what it has: as
    many as the rounds it may keep (a host busy half the time still reaches max_rounds)."""
    return stopping.max_rounds


def _contended(pair: list[CaseResult], sides: list[Side]) -> str | None:
    """Why a round pair is left out: a side timed under contention (the other side, run
    moments apart, is then no fair partner for it); None to keep it."""
    return "; ".join(f"{side.name}: {result.reason}" for side, result in zip(sides, pair,
                                                                             strict=True)
                     if result.status == STATUS_CONTENDED) or None


def _needs_another_round(clean: list[list[CaseResult]], dropped: list[list[CaseResult]],
                         stopping: Stopping) -> bool:
    """A case stops at its first failure (either side), when its clean rounds suffice,
    or when it has left out as many contended rounds as it may."""
    if any(not res.measured for per_side in clean + dropped for res in per_side):
        return False
    if len(dropped[0]) >= max_dropped_rounds(stopping):
        return False
    if not clean[0]:
        return True
    return stopping.needs_another_round([[res.timing.median_s for res in per_side]
                                         for per_side in clean])


def lockstep_possible(case, sides: list[Side]) -> bool:  # noqa: ANN001
    """Whether a case's rounds can run both sides at once (bench.measurement.baton): two
    sides, both forked CPU workers (a spawned worker's imports would run during the other
    side's turn), both checkouts new enough to take the baton, and a case timed by the
    sampler (serving and time-to-target cases hold the baton throughout: no gain)."""
    spec = case.spec
    return (len(sides) == 2 and all(side.fork and supports_baton(side.code.source)
                                    for side in sides)
            and spec.device == "cpu" and spec.training is None and not is_distributed(spec)
            and spec.mode in (None, "closed_loop")
            and spec.scenario == CLOSED_LOOP)


def _round_spec(case, done: int):  # noqa: ANN001, ANN202
    # Rounds after the first clean one only time: the task metrics, export checks and
    # FLOP count of that round stand for the session (merge keeps the first's), and the
    # timed region is the same either way (it ends before any of them).
    return case.spec if done == 0 else dataclasses.replace(case.spec, probe=True)


def _say_round(progress: Callable[[str], None] | None, done: int, rounds: int,
               names: str, case_id: str) -> None:
    if progress:
        # Past --rounds a case is getting extra rounds (its CI is still wide).
        of = f"/{rounds}" if done < rounds else " (extra)"
        progress(f"round {done + 1}{of} {names}: {case_id}")


def _run_round(case, sides: list[Side], order: list[int], done: int, rounds: int,  # noqa: ANN001
               progress: Callable[[str], None] | None,
               servers: ForkServers | None = None,
               lockstep: Lockstep | None = None) -> list[CaseResult]:
    """One round of one case: with ``lockstep``, both sides' workers at once taking turns
    (``order[0]`` first); else each side's worker in ``order``. ``done``: the case's clean
    rounds so far (the first one takes the task metrics)."""
    if lockstep is not None:
        return _run_lockstep_round(case, sides, order, done, rounds, progress, servers,
                                   lockstep)
    pair: list[CaseResult] = []
    for s in order:
        _say_round(progress, done, rounds, sides[s].name, case.case_id)
        pair.append(run_isolated(_round_spec(case, done), sides[s].code,
                                 servers if sides[s].fork else None, slot=sides[s].name))
    by_side = [None] * len(sides)
    for s, result in zip(order, pair, strict=True):
        by_side[s] = result
    return by_side


@dataclass(frozen=True)
class Lockstep:
    """What lockstep rounds share over a session: the baton's pipes, and one thread per
    side that lives as long as the session (a fork server dies with the thread that
    started it: bench.runners.fork_server.die_with_parent)."""

    batons: BatonPair
    threads: ThreadPoolExecutor


def _run_lockstep_round(case, sides: list[Side], order: list[int], done: int,  # noqa: ANN001
                        rounds: int, progress: Callable[[str], None] | None,
                        servers: ForkServers | None, lockstep: Lockstep) -> list[CaseResult]:
    """Both sides' workers at once, passing the baton; each side's ending (however it
    ends) is passed to the other, which then runs on alone."""
    _say_round(progress, done, rounds, " + ".join(sides[s].name for s in order),
               case.case_id)
    batons = lockstep.batons
    batons.begin(order[0])
    spec = _round_spec(case, done)

    def run(s: int) -> CaseResult:
        try:
            # Each side's watchdog allows for the partner's turns in its wall time.
            return run_isolated(spec, sides[s].code, servers, batons.env(s),
                                slot=sides[s].name, timeout_scale=len(sides))
        finally:
            batons.ended(s)

    futures = {s: lockstep.threads.submit(run, s) for s in order}
    return [futures[s].result() for s in range(len(sides))]


def run_ab(suite_path: str | Path, baseline: WorkerCode, current: WorkerCode,
           stopping: Stopping, out_dir: str | Path, select: dict[str, set[str]] | None = None,
           progress: Callable[[str], None] | None = None, fork: bool = True,
           count_instructions: bool = False,
           lockstep: bool = True) -> tuple[RunRecord, RunRecord]:
    """The A/B of ``bench ab``: OUT_DIR/baseline.json and OUT_DIR/current.json."""
    base, cur = run_interleaved(suite_path, [Side("baseline", baseline, fork),
                                             Side("current", current, fork)],
                                stopping, out_dir, select, progress, count_instructions,
                                lockstep)
    return base, cur
