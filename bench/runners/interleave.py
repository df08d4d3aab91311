"""Interleaved A/B: a suite run for two versions of the code, alternating, case by case.

On a shared machine the speed of a whole run drifts by several percent between runs
minutes apart (results/runs/gate-quality-cpu-epyc-2core.txt: unchanged runs at 0.97-1.08
of the first), which no number of trials inside one run can tell from a code change. So
each case is measured in rounds: in every round one worker process per side runs back to
back, the order alternating from round to round and case to case (ABBA...), so drift
within a pair is seconds, not minutes, and linear drift cancels over the rounds. The
gate tests the rounds' paired ratios (bench.measurement.stats.paired_ratio).

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
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchInputError
from bench.measurement.fingerprint import fingerprint, git_state
from bench.measurement.stats import needs_another_round
from bench.results.schema import STATUS_CONTENDED, CaseResult, RunRecord
from bench.results.store import exclusive_output, write_atomically
from bench.runners.isolation import WorkerCode, run_isolated
from bench.runners.merge import merge_process_results
from bench.runners.plan import plan_suite
from bench.runners.sweep import new_run_info, skipped_result
from bench.spec import load_suite


@dataclass(frozen=True)
class Side:
    name: str
    code: WorkerCode

    def describe(self) -> dict[str, object]:
        return {"side": self.name, "source": str(Path(self.code.source).resolve()),
                "commit": git_commit(self.code.source), "env": dict(self.code.env)}


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


def _merged(results: list[CaseResult]) -> CaseResult:
    # merge_process_results keeps each process's median in run order
    # (PROCESS_MEDIANS_KEY): here, the rounds that compare/gate pair.
    merged = merge_process_results(results)
    if merged.status == "ok":
        merged.details["ab_rounds"] = len(results)
        repeats = sum(r.details.get("contended_round_repeats", 0) for r in results)
        if repeats:
            merged.details["contended_round_repeats"] = repeats
    return merged


# bench ab's defaults (the CLI reads them here): 6 rounds at least, up to 16 while a
# case's paired CI is wider than +-4% (log scale).
DEFAULT_ROUNDS = 6
DEFAULT_MAX_ROUNDS = 16
DEFAULT_TARGET_HALF_WIDTH = 0.04


def run_interleaved(suite_path: str | Path, sides: list[Side], rounds: int,
                    out_dir: str | Path, select: dict[str, set[str]] | None = None,
                    progress: Callable[[str], None] | None = None,
                    max_rounds: int | None = None,
                    target_half_width: float = DEFAULT_TARGET_HALF_WIDTH) -> list[RunRecord]:
    """Measure every runnable case ``rounds`` times per side, interleaved, then keep adding
    rounds, up to ``max_rounds``, for each case whose paired CI is wider than
    ``target_half_width`` (bench.measurement.stats.needs_another_round). Writes OUT_DIR/SIDE.json
    for every side after every round, so a cut-short session keeps its finished rounds."""
    max_rounds = rounds if max_rounds is None else max_rounds
    if rounds < 2:
        raise BenchInputError("--rounds", f"{rounds} is too few to test paired rounds",
                              valid="an integer >= 2 (5 or more to detect 10%)")
    if max_rounds < rounds:
        raise BenchInputError("--max-rounds", f"{max_rounds} is below --rounds {rounds}",
                              valid=f"an integer >= {rounds}")
    if len({side.name for side in sides}) != len(sides):
        raise ValueError("side names must differ")
    suite = load_suite(suite_path)
    planned = plan_suite(suite, select)
    session = uuid.uuid4().hex[:12]
    machine = fingerprint(suite.path)
    pairing = {"session": session, "rounds": rounds, "max_rounds": max_rounds,
               "target_half_width": target_half_width,
               "order": "one process per side per round, forward and reversed in turn over "
                        "rounds and cases"}
    records = [RunRecord(run=new_run_info(suite, select, f"{session}-{side.name}",
                                          pairing={**pairing, **side.describe()}),
                         fingerprint=machine) for side in sides]
    with contextlib.ExitStack() as locks:
        for side in sides:
            locks.enter_context(exclusive_output(Path(out_dir) / f"{side.name}.json"))
        _rounds(sides, records, planned, rounds, max_rounds, target_half_width, out_dir,
                progress)
    return records


def _rounds(sides: list[Side], records: list[RunRecord], planned: list, rounds: int,
            max_rounds: int, target_half_width: float, out_dir: str | Path,
            progress: Callable[[str], None] | None) -> None:
    skipped = [skipped_result(p) for p in planned if p.skip_reason]
    runnable = [p for p in planned if not p.skip_reason]
    results = {p.case_id: [[] for _ in sides] for p in runnable}
    pending = {p.case_id for p in runnable}
    for r in range(max_rounds):
        for i, case in enumerate(runnable):
            if case.case_id not in pending:
                continue
            pair = _run_round(case, sides, round_order(r, i, len(sides)), r, rounds, progress)
            for s, result in enumerate(pair):
                results[case.case_id][s].append(result)
        for s, record in enumerate(records):
            record.cases = [_merged(results[p.case_id][s]) for p in runnable
                            if results[p.case_id][s]] + skipped
            write_atomically(Path(out_dir) / f"{sides[s].name}.json", record.to_dict(),
                             "--out-dir")
        # A case stops at its first failure (either side) or when its rounds suffice.
        pending = {cid for cid in pending
                   if all(res.status == "ok" for per_side in results[cid] for res in per_side)
                   and needs_another_round([[res.timing.median_s for res in per_side]
                                      for per_side in results[cid]],
                                     rounds, max_rounds, target_half_width)}
        if not pending:
            break


# A round in which a side was timed beside another process (status contended) is run
# again, both sides, up to this many times; after that it stays contended and the gate
# calls the case inconclusive.
CONTENDED_ROUND_RETRIES = 2


def _run_round(case, sides: list[Side], order: list[int], r: int, rounds: int,  # noqa: ANN001
               progress: Callable[[str], None] | None) -> list[CaseResult]:
    """One round of one case: each side's worker in ``order``; a contended round again."""
    for attempt in range(CONTENDED_ROUND_RETRIES + 1):
        pair: list[CaseResult | None] = [None] * len(sides)
        for s in order:
            if progress:
                again = f" (again: contended {attempt}x)" if attempt else ""
                # Past --rounds a case is getting extra rounds (its CI is still wide).
                of = f"/{rounds}" if r < rounds else " (extra)"
                progress(f"round {r + 1}{of} {sides[s].name}: {case.case_id}{again}")
            # Rounds after the first only time: the task metrics, export checks and FLOP
            # count of round 1 stand for the session (merge keeps round 1's), and the
            # timed region is the same either way (it ends before any of them).
            spec = case.spec if r == 0 else dataclasses.replace(case.spec, probe=True)
            pair[s] = run_isolated(spec, sides[s].code)
        if all(res.status != STATUS_CONTENDED for res in pair):
            break
    for res in pair:
        if attempt:
            res.details["contended_round_repeats"] = attempt
    return pair


def run_ab(suite_path: str | Path, baseline: WorkerCode, current: WorkerCode, rounds: int,
           out_dir: str | Path, select: dict[str, set[str]] | None = None,
           progress: Callable[[str], None] | None = None, max_rounds: int | None = None,
           target_half_width: float = DEFAULT_TARGET_HALF_WIDTH,
           ) -> tuple[RunRecord, RunRecord]:
    """The A/B of ``bench ab``: OUT_DIR/baseline.json and OUT_DIR/current.json."""
    base, cur = run_interleaved(suite_path, [Side("baseline", baseline),
                                             Side("current", current)],
                                rounds, out_dir, select, progress, max_rounds,
                                target_half_width)
    return base, cur
