"""Interleaved A/B: a suite run for two versions of the code, alternating, case by case.

Each case is one comparison of two arms, the baseline's worker and the current one's,
measured in paired rounds by the round runner (bench.orchestrate.rounds: its order, its
stopping rule, contended rounds left out); the gate tests the rounds' paired ratios.
This module adds what an A/B session is beyond its rounds: the two checkouts (a git
worktree for ``--baseline-ref``), one file per side rewritten after every pass over the
cases, and an optional instruction count per side. CPU workers are forked per round from
a fork server of their side's code (bench.launch.fork_server), so a round costs its
measurement, not the imports.

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
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchInputError
from bench.launch.fork_server import DYNAMO
from bench.launch.isolation import WorkerCode
from bench.launch.launcher import LocalLauncher
from bench.measurement.baton import baton_pair
from bench.measurement.fingerprint import fingerprint, git_state
from bench.orchestrate.plan import PlannedCase, plan_suite, skipped_result
from bench.orchestrate.rounds import Arm, Comparison, Lockstep, RoundRunner, Stopping
from bench.results.schema import STATUS_SKIPPED, CaseResult, RoundsResult, RunInfo, RunRecord
from bench.results.store import exclusive_output, write_atomically
from bench.spec import load_suite
from bench.spec.model import CaseSpec, SuiteSpec


@dataclass(frozen=True)
class Side:
    name: str
    code: WorkerCode
    # CPU workers forked from a per-side fork server (bench.launch.fork_server) rather
    # than spawned: the same worker code, without paying its imports every round.
    fork: bool = True
    # The suite file this side reads, when it is not the session's: the user's repository
    # at another commit (bench ab --baseline-ref on a user's project), whose models the
    # side's cases then import.
    suite: Path | None = None

    def describe(self) -> dict[str, object]:
        described = {"side": self.name, "source": str(Path(self.code.source).resolve()),
                     "commit": git_commit(self.code.source), "env": dict(self.code.env),
                     "workers": WORKER_START[self.fork]}
        if self.suite is not None:
            described.update(suite=str(self.suite.resolve()),
                             suite_commit=git_commit(self.suite.resolve().parent))
        return described

    def launcher(self) -> LocalLauncher:
        """This side's workers: its own fork servers (both sides' workers may run at
        once), which also import torch._dynamo (both sides' workers carry it alike)."""
        return LocalLauncher(self.code, self.fork, preload=(DYNAMO,))


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
          "imported torch and the worker once (bench.launch.fork_server), started afresh "
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


def git_toplevel(folder: Path) -> Path | None:
    """The root of the git work tree holding ``folder`` (None outside one, or no git)."""
    try:
        proc = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    top = proc.stdout.strip()
    return Path(top).resolve() if proc.returncode == 0 and top else None


def has_bench_package(tree: Path) -> bool:
    return (tree / "bench" / "runners" / "worker.py").is_file()


@contextlib.contextmanager
def git_worktree(ref: str, repo: Path, bench_package: bool = True) -> Iterator[Path]:
    """A detached checkout of ``ref`` in a temporary directory, removed afterwards; with
    ``bench_package`` it must hold the bench package (else its workers would import
    another checkout's); without, it is a user's repository (its suite and models)."""
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
        if bench_package and not has_bench_package(tree):
            raise BenchInputError("--baseline-ref", f"commit {commit[:12]} ({ref}) holds no "
                                  "bench package (bench/runners/worker.py): nothing to "
                                  "measure as the baseline")
        yield tree
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


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
    suites = [load_suite(side.suite or suite_path) for side in sides]
    planned, specs = _plan_sides(sides, suites, select)
    session = uuid.uuid4().hex[:12]
    machine = fingerprint(suites[-1].path)
    pairing = {"session": session, **stopping.describe(), "order": ROUND_ORDER[lockstep]}
    records = [RunRecord(run=RunInfo.starting(suite, select, f"{session}-{side.name}",
                                          pairing={**pairing, **side.describe()}),
                         fingerprint=machine) for side, suite in zip(sides, suites,
                                                                     strict=True)]
    with contextlib.ExitStack() as stack:
        for side in sides:
            stack.enter_context(exclusive_output(Path(out_dir) / f"{side.name}.json"))
        launchers = [stack.enter_context(side.launcher()) for side in sides]
        lockstep_run = Lockstep(stack.enter_context(baton_pair()), stack.enter_context(
            ThreadPoolExecutor(len(sides), thread_name_prefix="ab-side"))) \
            if lockstep and len(sides) == 2 else None
        skipped = [skipped_result(p) for p in planned if p.skip_reason]
        runnable = [p for p in planned if not p.skip_reason]
        comparisons = [Comparison(p.case_id, [Arm(side.name, side_specs[p.case_id], launcher)
                                              for side, side_specs, launcher in zip(
                                                  sides, specs, launchers, strict=True)])
                       for p in runnable]

        def write_sides() -> None:
            for s, record in enumerate(records):
                record.cases = [c.merged(s) if c.kept[s] or c.left_out[s] else _unmeasured(p)
                                for c, p in zip(comparisons, runnable, strict=True)] + skipped
                write_atomically(Path(out_dir) / f"{sides[s].name}.json", record.to_dict(),
                                 "--out-dir")

        RoundRunner(stopping, lockstep_run, progress, fresh_servers).run(
            comparisons, after_pass=write_sides)
        if count_instructions:
            _count_instructions(sides, launchers, records, planned, out_dir, progress)
    return records


def _plan_sides(sides: list[Side], suites: list[SuiteSpec],
                select: dict[str, set[str]] | None
                ) -> tuple[list[PlannedCase], list[dict[str, CaseSpec]]]:
    """The session's cases, as the last side's suite names them, and each side's own spec
    of every case (its suite's copy: the models of its commit). A case another side cannot
    run, or whose suite lacks it, is skipped with that side's reason."""
    plans = [plan_suite(suite, select) for suite in suites]
    by_side = [{p.case_id: p for p in plan} for plan in plans]
    planned = []
    for case in plans[-1]:
        reason = case.skip_reason
        for side, cases in zip(sides, by_side, strict=True):
            other = cases.get(case.case_id)
            if reason is None and other is None:
                reason = f"the {side.name} side's suite has no such case"
            elif reason is None and other.skip_reason:
                reason = f"{side.name} side: {other.skip_reason}"
        planned.append(dataclasses.replace(case, skip_reason=reason))
    specs = [{cid: p.spec for cid, p in cases.items()} for cases in by_side]
    return planned, specs


def _count_instructions(sides: list[Side], launchers: list[LocalLauncher],
                        records: list[RunRecord], planned: list[PlannedCase],
                        out_dir: str | Path, progress: Callable[[str], None] | None) -> None:
    """One callgrind count per side of every measured CPU case, into its merged record."""
    for case in planned:
        if case.skip_reason or case.spec.device != "cpu":
            continue
        for side, launcher, record in zip(sides, launchers, records, strict=True):
            merged = record.case(case.case_id)
            if merged is None or merged.status != "ok":
                continue
            if progress:
                progress(f"instructions {side.name}: {case.case_id}")
            counted = launcher.run_once(dataclasses.replace(case.spec, probe=True,
                                                            count_instructions=True))
            if counted.status == "ok":
                merged.instructions = counted.instructions
            else:
                merged.warnings.append(f"instruction count failed: {counted.status}: "
                                       f"{counted.reason}")
            write_atomically(Path(out_dir) / f"{side.name}.json", record.to_dict(),
                             "--out-dir")


def _unmeasured(case: PlannedCase) -> CaseResult:
    """A case no round of which ran (the time budget ran out first): skipped, and said so,
    so that the gate cannot pass a session that never measured it."""
    return CaseResult.for_case(case.spec, STATUS_SKIPPED, "not measured: the session's "
                               "time budget ran out before its first round",
                               rounds=RoundsResult([], out_of_time=True))


def run_ab(suite_path: str | Path, baseline: WorkerCode, current: WorkerCode,
           stopping: Stopping, out_dir: str | Path, select: dict[str, set[str]] | None = None,
           progress: Callable[[str], None] | None = None, fork: bool = True,
           count_instructions: bool = False, lockstep: bool = True,
           baseline_suite: Path | None = None) -> tuple[RunRecord, RunRecord]:
    """The A/B of ``bench ab``: OUT_DIR/baseline.json and OUT_DIR/current.json. With
    ``baseline_suite``, the baseline side reads that suite file (the user's repository at
    the baseline commit) and the current side ``suite_path``, each recorded with its
    repository's commit."""
    current_suite = Path(suite_path) if baseline_suite is not None else None
    base, cur = run_interleaved(suite_path, [Side("baseline", baseline, fork, baseline_suite),
                                             Side("current", current, fork, current_suite)],
                                stopping, out_dir, select, progress, count_instructions,
                                lockstep)
    return base, cur
