"""Run every case of a suite, each isolated, appending each result as it finishes."""

from __future__ import annotations

import datetime as dt
import functools
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from bench.errors import BenchInputError
from bench.measurement.fingerprint import fingerprint
from bench.results.schema import (
    STATUS_CONTENDED,
    STATUS_SKIPPED,
    CaseResult,
    RunInfo,
    RunRecord,
    ShardInfo,
)
from bench.results.store import ResultStore, exclusive_output
from bench.runners.fork_server import ForkServers
from bench.runners.isolation import run_in_processes
from bench.runners.paired import paired_speedup, reference_of, shared_measurement
from bench.runners.plan import PlannedCase, plan_suite, skipped_result
from bench.runners.ray_executor import run_cases_on_ray
from bench.spec import load_suite
from bench.spec.model import SuiteSpec, measurement_key
from bench.spec.shards import Shard

CaseRunner = Callable[[PlannedCase], CaseResult]


def _run_one(planned: PlannedCase, servers: ForkServers | None = None) -> CaseResult:
    if planned.skip_reason:
        return skipped_result(planned)
    return run_in_processes(planned.spec, servers)


def new_run_info(suite, select: dict[str, set[str]] | None, run_id: str | None = None,
                 **fields: object) -> RunInfo:
    """The metadata of a run of ``suite`` started now by this command."""
    return RunInfo(
        run_id=run_id or uuid.uuid4().hex[:12], suite_name=suite.name, suite_path=suite.path,
        suite_sha256=suite.sha256,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        command=list(sys.argv),
        selection={k: sorted(v) for k, v in (select or {}).items()}, **fields)


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
    info = new_run_info(suite, select, shard=shard)
    return ResultStore.create(out, RunRecord(run=info, fingerprint=fingerprint(suite.path)))


def run_suite(suite: str | Path | SuiteSpec, out: str | Path, *, resume: bool = False,
              overwrite: bool = False, select: dict[str, set[str]] | None = None,
              progress: bool = True, runner: CaseRunner = _run_one,
              paired_rounds: int | None = None, shard: Shard | None = None,
              executor: str = "local", ray_address: str | None = None,
              host_probe: bool = False, retry_contended: int = 0) -> ResultStore:
    """Run every case of a suite (a file, or one built in memory) into ``out``; then, with
    paired rounds (the suite's ``paired_rounds`` unless given), each variant against its
    reference in interleaved rounds. With ``shard``, only the cases of that shard
    (bench.spec.shards), recorded as such for ``bench merge``. ``executor = "ray"``: each
    case a Ray task (bench.runners.ray_executor), on the cluster at ``ray_address``. With
    ``host_probe``, the host probe's kernels are timed before the first case and after the
    last (bench.measurement.host_probe) into the run's ``host_probes``. A case timed under
    contention is run again up to ``retry_contended`` times (its last run stands)."""
    if not isinstance(suite, SuiteSpec):
        suite = load_suite(suite)
    every = plan_suite(suite, select)
    planned = [p for p in every if shard is None or shard.holds(p.case_id)]
    shard_info = (ShardInfo(shard.index, shard.count, [p.case_id for p in planned])
                  if shard else None)
    # One writer per result file: a second run (--resume beside --overwrite) would
    # otherwise overwrite the first one's cases with its own view of the file.
    with exclusive_output(out), ForkServers(per_preload=True) as servers:
        store = open_store(suite, Path(out), resume, overwrite, select, shard_info)
        if host_probe:
            _probe_into(store, "start")
        if runner is _run_one:  # CPU workers fork from the sweep's servers
            runner = functools.partial(_run_one, servers=servers)
        if retry_contended:
            runner = functools.partial(_retrying_contended, runner, retry_contended)
        if executor == "ray":
            run_cases_on_ray(store, planned, suite.name, progress, ray_address)
        else:
            _run_cases(store, planned, suite.name, out, progress, runner)
        rounds = suite.paired_rounds if paired_rounds is None else paired_rounds
        if rounds:  # a reference may sit in another shard: it is looked up in the whole plan
            _pair_with_references(store, every, rounds, progress, servers)
        if host_probe:
            _probe_into(store, "end")
    return store


def _retrying_contended(runner: CaseRunner, retries: int, case: PlannedCase) -> CaseResult:
    """The case run again while it comes back contended, up to ``retries`` times: a
    neighbour's burst passes, and a clean run is judged in both directions. The record
    keeps the earlier runs' reasons (details.contended_reruns)."""
    result = runner(case)
    reasons = []
    while result.status == STATUS_CONTENDED and len(reasons) < retries:
        reasons.append(result.reason)
        result = runner(case)
    if reasons:
        result.details["contended_reruns"] = reasons
    return result


def _probe_into(store: ResultStore, when: str) -> None:
    from bench.measurement.host_probe import probe_host  # imports torch: only on --host-probe

    store.record.run.host_probes.append(probe_host(when))
    store.flush()


def _pair_with_references(store: ResultStore, planned: list[PlannedCase], rounds: int,
                          progress: bool, servers: ForkServers | None = None) -> None:
    """Each measured variant's speed-up over its reference, in interleaved rounds
    (bench.runners.paired); a case that already has one (--resume) keeps it."""
    by_id = {p.case_id: p.spec for p in planned}
    todo = []
    for result in store.record.cases:
        spec = by_id.get(result.case_id)
        reference = reference_of(spec, planned) if spec is not None else None
        if result.measured and reference is not None and result.vs_reference is None:
            todo.append((result, spec, reference))
    for result, spec, reference in tqdm(todo, desc="paired rounds", unit="case",
                                         disable=not progress, file=sys.stderr):
        paired = paired_speedup(spec, reference, rounds, servers)
        if isinstance(paired, str):
            result.warnings.append(f"no paired speed-up against {reference.case_id}: {paired}")
        else:
            result.vs_reference = paired
            if paired.contended:
                result.warnings.append(f"paired speed-up from rounds timed under contention "
                                       f"(all {paired.left_out} were)")
        store.flush()


def _run_cases(store: ResultStore, planned: list[PlannedCase], name: str, out: str | Path,
               progress: bool, runner: CaseRunner) -> None:
    done = store.completed_ids()
    todo = [p for p in planned if p.case_id not in done]
    # One measurement per configuration: later identical cases share the first's record.
    measured = {measurement_key(c): c for c in store.record.cases if c.status != STATUS_SKIPPED}
    bar = tqdm(todo, desc=name, unit="case", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, bar_format="{l_bar}{bar}| {n}/{total} "
                                              "[{elapsed}<{remaining}] {postfix}")
    if done:
        bar.write(f"resuming {out}: {len(done)} cases done, {len(todo)} to run", file=sys.stderr)
    for case in bar:
        bar.set_postfix_str(case.case_id, refresh=True)
        original = measured.get(measurement_key(case.spec)) if not case.skip_reason else None
        result = shared_measurement(original, case.spec) if original else runner(case)
        if not case.skip_reason and original is None:
            measured[measurement_key(case.spec)] = result
        store.append(result)
        if result.status not in ("ok", "skipped"):
            bar.write(f"{result.status}: {result.case_id}: {result.reason}", file=sys.stderr)
    bar.close()
