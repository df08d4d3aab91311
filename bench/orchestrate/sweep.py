"""Run every case of a suite, each isolated, appending each result as it finishes: on
this machine one case at a time, or on a Ray cluster many at once; the same loop, through
a launcher (bench.launch.launcher)."""

from __future__ import annotations

import contextlib
import sys
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

from bench.errors import BenchInputError
from bench.extras import is_missing_extra
from bench.launch.launcher import Launcher, local_launcher
from bench.launch.ray_executor import RayLauncher
from bench.measurement.fingerprint import fingerprint
from bench.orchestrate.paired import paired_speedup, reference_of, shared_measurement
from bench.orchestrate.plan import PlannedCase, plan_suite, skipped_result
from bench.orchestrate.progress import progress as progress_bar
from bench.results.schema import (
    STATUS_CONTENDED,
    STATUS_CRASHED,
    STATUS_SKIPPED,
    CaseResult,
    RunInfo,
    RunRecord,
    ShardInfo,
)
from bench.results.store import ResultStore, exclusive_output
from bench.spec import load_suite
from bench.spec.model import CaseSpec, SuiteSpec, measurement_key
from bench.spec.shards import Shard


def _shard_text(info: ShardInfo | None) -> str:
    return f"shard {info.index}/{info.count}" if info else "the unsharded suite"


def open_store(suite, out: Path, resume: bool, overwrite: bool,
               select: dict[str, set[str]] | None,
               shard: ShardInfo | None = None) -> ResultStore:
    if out.exists() and resume:
        store = ResultStore.open(out)
        if store.record.run.suite_sha256 != suite.sha256:
            raise BenchInputError(str(out), "was written by a different version of "
                                  f"{suite.path}; refusing to mix results", key="run.suite_sha256")
        held = store.record.run.shard
        if (held and (held.index, held.count)) != (shard and (shard.index, shard.count)):
            raise BenchInputError(str(out), f"holds {_shard_text(held)}, not "
                                  f"{_shard_text(shard)}; refusing to mix results",
                                  key="run.shard")
        return store
    if out.exists() and not overwrite:
        raise BenchInputError(str(out), "result file exists; pass --resume to finish it or "
                              "--overwrite to start again")
    info = RunInfo.starting(suite, select, shard=shard)
    return ResultStore.create(out, RunRecord(run=info, fingerprint=fingerprint(suite.path)))


def run_suite(suite: str | Path | SuiteSpec, out: str | Path, *, resume: bool = False,
              overwrite: bool = False, select: dict[str, set[str]] | None = None,
              progress: bool = True, launcher: Launcher | None = None,
              paired_rounds: int | None = None, shard: Shard | None = None,
              executor: str = "local", ray_address: str | None = None,
              host_probe: bool = False, retry_contended: int = 0) -> ResultStore:
    """Run every case of a suite (a file, or one built in memory) into ``out``; then, with
    paired rounds (the suite's ``paired_rounds`` unless given), each variant against its
    reference in interleaved rounds. Workers start through ``launcher`` (by default this
    machine's: CPU workers forked from fork servers, bench.launch.launcher);
    ``executor = "ray"``: each case a Ray task (bench.launch.ray_executor), on the cluster
    at ``ray_address``. With ``shard``, only the cases of that shard (bench.spec.shards),
    recorded as such for ``bench merge``. With ``host_probe``, the host probe's kernels
    are timed before the first case and after the last (bench.measurement.host_probe) into
    the run's ``host_probes``. A case timed under contention is run again up to
    ``retry_contended`` times (its last run stands)."""
    if not isinstance(suite, SuiteSpec):
        suite = load_suite(suite)
    every = plan_suite(suite, select)
    planned = [p for p in every if shard is None or shard.holds(p.case_id)]
    _refuse_missing_extras(planned, suite.path)
    shard_info = (ShardInfo(shard.index, shard.count, [p.case_id for p in planned])
                  if shard else None)
    # One writer per result file: a second run (--resume beside --overwrite) would
    # otherwise overwrite the first one's cases with its own view of the file.
    with exclusive_output(out), local_launcher(launcher, per_preload=True) as local, \
            (RayLauncher(ray_address) if executor == "ray"
             else contextlib.nullcontext(local)) as cases_launcher:
        store = open_store(suite, Path(out), resume, overwrite, select, shard_info)
        if host_probe:
            _probe_into(store, "start")
        _run_cases(store, planned, suite.name, out, progress, cases_launcher, retry_contended)
        rounds = suite.paired_rounds if paired_rounds is None else paired_rounds
        if rounds:  # a reference may sit in another shard: it is looked up in the whole plan
            _pair_with_references(store, every, rounds, progress, local)
        if host_probe:
            _probe_into(store, "end")
    return store


def _refuse_missing_extras(planned: list[PlannedCase], source: str) -> None:
    """Nothing to run because an optional feature is not installed: one line that says
    what to install, not a run of skipped cases."""
    if planned and all(p.skip_reason for p in planned):
        missing = [p.skip_reason for p in planned if is_missing_extra(p.skip_reason)]
        if missing:
            raise BenchInputError(source, f"none of its {len(planned)} cases can run here; "
                                  f"{len(missing)} of them: {missing[0]}")


def _probe_into(store: ResultStore, when: str) -> None:
    from bench.measurement.host_probe import probe_host  # imports torch: only on --host-probe

    store.record.run.host_probes.append(probe_host(when))
    store.flush()


def _pair_with_references(store: ResultStore, planned: list[PlannedCase], rounds: int,
                          progress: bool, launcher: Launcher) -> None:
    """Each measured variant's speed-up over its reference, in interleaved rounds
    (bench.orchestrate.paired); a case that already has one (--resume) keeps it."""
    by_id = {p.case_id: p.spec for p in planned}
    todo = []
    for result in store.record.cases:
        spec = by_id.get(result.case_id)
        reference = reference_of(spec, planned) if spec is not None else None
        if result.measured and reference is not None and result.vs_reference is None:
            todo.append((result, spec, reference))
    for result, spec, reference in progress_bar(len(todo), "paired rounds", progress, todo):
        paired = paired_speedup(spec, reference, rounds, launcher)
        if isinstance(paired, str):
            result.warnings.append(f"no paired speed-up against {reference.case_id}: {paired}")
        else:
            result.vs_reference = paired
            if paired.contended:
                result.warnings.append(f"paired speed-up from the {paired.rounds} rounds "
                                       "timed under contention: fewer than two were clean")
        store.flush()


def _run_cases(store: ResultStore, planned: list[PlannedCase], name: str, out: str | Path,
               progress: bool, launcher: Launcher, retry_contended: int = 0) -> None:
    """Every case of ``planned`` missing from ``store``, each started through ``launcher``
    (one at a time on this machine, many at once on Ray), its record appended as it ends;
    a contended one submitted again up to ``retry_contended`` times (a neighbour's burst
    passes, and a clean run is judged in both directions; the record keeps the earlier
    runs' reasons, details.contended_reruns). Identical configurations are measured once,
    later ones sharing the first's record."""
    done = store.completed_ids()
    todo = [p for p in planned if p.case_id not in done]
    measured = {measurement_key(c): c for c in store.record.cases if c.status != STATUS_SKIPPED}
    waiting: dict[str, list[CaseSpec]] = {}  # identical configurations waiting on a first
    pending: dict[Future[CaseResult], tuple[PlannedCase, list[str]]] = {}
    bar = progress_bar(len(todo), f"{name} ({launcher.name})", progress)
    if done:
        bar.write(f"resuming {out}: {len(done)} cases done, {len(todo)} to run", file=sys.stderr)

    def finish(result: CaseResult) -> None:
        store.append(result)
        bar.update()
        if result.status not in ("ok", "skipped"):
            bar.write(f"{result.status}: {result.case_id}: {result.reason}", file=sys.stderr)

    def collect(block: bool) -> None:
        finished, _ = wait(list(pending), timeout=None if block else 0,
                           return_when=FIRST_COMPLETED)
        for future in finished:
            case, reruns = pending.pop(future)
            result = _result_of(future, case)
            if result.status == STATUS_CONTENDED and len(reruns) < retry_contended:
                pending[launcher.submit(case.spec)] = (case, [*reruns, result.reason or ""])
                continue
            if reruns:
                result.details["contended_reruns"] = reruns
            key = measurement_key(case.spec)
            measured[key] = result
            finish(result)
            for spec in waiting.pop(key, []):
                finish(shared_measurement(result, spec))

    for case in todo:
        bar.set_postfix_str(case.case_id, refresh=True)
        key = measurement_key(case.spec)
        if case.skip_reason:
            finish(skipped_result(case))
        elif key in measured:
            finish(shared_measurement(measured[key], case.spec))
        elif key in waiting:
            waiting[key].append(case.spec)
        else:
            waiting[key] = []
            pending[launcher.submit(case.spec)] = (case, [])
        while pending:  # what has ended goes in now (on this machine: every case so far)
            before = len(pending)
            collect(block=False)
            if len(pending) == before:
                break
    while pending:
        collect(block=True)
    bar.close()
    order = {p.case_id: i for i, p in enumerate(planned)}  # the file in suite order
    store.record.cases.sort(key=lambda c: order.get(c.case_id, len(order)))
    store.flush()


def _result_of(future: Future[CaseResult], case: PlannedCase) -> CaseResult:
    """The case's record, or a crash saying why the launcher lost it (a Ray task)."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - a worker the launcher lost is the case's status
        text = str(exc).splitlines()[0] if str(exc) else ""
        return CaseResult.for_case(case.spec, STATUS_CRASHED, f"the launcher lost the case: "
                                   f"{type(exc).__name__}: {text}"[:500])
