"""Run one case in its own worker process, under a timeout and a memory limit.

The worker is a fresh process in its own process group: an interpreter started with
``python -P`` and PYTHONPATH set to the checkout whose code it must run, so a ``bench``
folder in the working directory is never imported instead; or, for a CPU case run with
fork servers, a child forked from such an interpreter that had imported only modules the
case imports itself (bench.launch.fork_server). The kernel kills
it when the thread that started it dies (``PR_SET_PDEATHSIG``, set in the child before
exec, then a check that the parent is still the one that forked it: no window in which
a killed sweep leaves a worker running). Ctrl-C (or any exception) in the parent kills
the worker's group before it propagates. Temporary case directories of sweeps that were
killed are removed by the next run.
A watchdog guards it: past ``timeout_s`` the group is killed (status ``timeout``).
With a memory limit it polls, and when the RSS of the worker and its children passes
``memory_limit_mib`` the group is killed (status ``oom``). A worker that dies without
writing its result is ``crashed``, with the signal or exit code and the tail of its stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.errors import BenchInputError
from bench.launch.fork_server import DYNAMO, ForkHazard, ForkServers, die_with_parent
from bench.launch.merge import merge_process_results, merge_seed_runs
from bench.measurement import instructions
from bench.measurement.allocator import worker_env
from bench.measurement.memory import MIB, tree_rss_bytes
from bench.results.migrations import MIGRATIONS, case_for_worker, migrate_case
from bench.results.schema import (
    FAILED_STATUSES,
    SCHEMA_VERSION,
    STATUS_CRASHED,
    STATUS_OOM,
    STATUS_TIMEOUT,
    CaseResult,
    InstructionCount,
)
from bench.spec.model import CaseSpec
from bench.typed import SchemaError, from_dict

# The watchdog shares the machine with the worker it guards: poll gently, and scan
# /proc for the worker's children only when a memory limit needs enforcing.
POLL_INTERVAL_S = 0.05
STDERR_TAIL_LINES = 60


@dataclass(frozen=True)
class WorkerCode:
    """Which code a worker runs: the directory holding the ``bench`` package it imports
    (another checkout, for an interleaved A/B against another commit) and extra
    environment variables. The worker starts with ``python -P`` and PYTHONPATH set to
    ``source``, so neither the working directory nor the installed package shadows it."""

    source: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def this_checkout(cls, env: Mapping[str, str] | None = None) -> WorkerCode:
        return cls(Path(__file__).resolve().parents[2], dict(env or {}))

    def record_version(self) -> int:
        """The result-schema version this code's worker writes (and whose case file it
        reads): this checkout's own, or asked of the other checkout's Python once."""
        return _record_version(self.source.resolve())


@functools.cache
def _record_version(source: Path) -> int:
    if source == Path(__file__).resolve().parents[2]:
        return SCHEMA_VERSION
    probe = subprocess.run(
        [sys.executable, "-P", "-c",
         "from bench.results.schema import SCHEMA_VERSION; print(SCHEMA_VERSION)"],
        env={**os.environ, "PYTHONPATH": str(source)}, capture_output=True, text=True,
        timeout=120, check=False)
    try:
        version = int(probe.stdout.strip())
    except ValueError:
        version = -1
    known = [*MIGRATIONS, SCHEMA_VERSION]
    if version not in known:
        said = probe.stdout.strip() or probe.stderr.strip()[-200:]
        raise BenchInputError(str(source), f"its bench writes records of version {said!r}",
                              key="bench.results.schema.SCHEMA_VERSION",
                              valid=", ".join(map(str, known)))
    return version


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


_CASE_DIR_PREFIX = "bench-case-"
_OWNER_FILE = "owner"
_swept_stale_dirs = False


def _owner_alive(owner: str) -> bool:
    try:
        pid, created = owner.split()
        return abs(psutil.Process(int(pid)).create_time() - float(created)) < 1.0
    except (ValueError, psutil.Error):
        return False


def remove_stale_case_dirs(root: Path | None = None, min_age_s: float = 60.0) -> list[Path]:
    """Remove the temporary case directories of sweeps that no longer run (a sweep killed
    with SIGKILL cannot clean up after itself). A directory's ``owner`` file names the
    process that made it; one without (older versions) goes once an hour old."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    now = time.time()
    for path in root.glob(f"{_CASE_DIR_PREFIX}*"):
        try:
            if not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
            owner_file = path / _OWNER_FILE
            if owner_file.exists():
                stale = not _owner_alive(owner_file.read_text())
            else:
                stale = now - path.stat().st_mtime > max(min_age_s, 3600.0)
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        hint = " (possibly the kernel's OOM killer)" if sig == "SIGKILL" else ""
        return f"worker killed by {sig}{hint}"
    return f"worker exited with code {returncode} without a result"


def _failed(case: CaseSpec, status: str, reason: str, stderr: str, peak_rss: int,
            started: float) -> CaseResult:
    return CaseResult.for_case(
        case, status, reason, stderr_tail=stderr,
        details={"watchdog_peak_rss_mib": peak_rss / MIB} if peak_rss else {},
        duration_s=time.perf_counter() - started,
    )


def run_in_processes(case: CaseSpec, servers: ForkServers | None = None,
                     code: WorkerCode | None = None) -> CaseResult:
    """Run a case in ``budget.processes`` independent workers, pooled into one record; a
    time-to-accuracy case in one worker per seed. With ``servers`` (a sweep's), a CPU
    case's workers are forked from them; a time-to-accuracy case's seeds always are (from
    a server of its own without)."""
    if case.training is not None:
        return run_seeds(case, code, servers)
    results = []
    for _ in range(case.budget.processes):
        results.append(run_isolated(case, code, servers))
        if results[-1].status not in ("ok", "contended"):  # contended: measured, go on
            break
    return merge_process_results(results)


def run_seeds(case: CaseSpec, code: WorkerCode | None = None,
              servers: ForkServers | None = None) -> CaseResult:
    """One worker per seed of a time-to-accuracy case; the seeds' runs merged."""
    results = []
    with contextlib.nullcontext(servers) if servers is not None else ForkServers() as servers:
        for seed in case.training.seed_list():
            results.append(run_isolated(dataclasses.replace(case, seed=seed), code, servers))
            if results[-1].status in FAILED_STATUSES:
                break
    return merge_seed_runs(results)


def run_isolated(case: CaseSpec, code: WorkerCode | None = None,
                 servers: ForkServers | None = None, run_env: Mapping[str, str] | None = None,
                 timeout_scale: float = 1.0) -> CaseResult:
    """Run ``case`` in a fresh worker process of ``code`` and return its result. With
    ``servers``, a CPU case's worker is forked from the fork server of its code and
    start-up environment (bench.launch.fork_server) instead of spawned (workers that run
    at once need ForkServers of their own). ``run_env``: variables the worker
    reads at run time. ``timeout_scale``: the watchdog's allowance for a worker that
    shares its wall time (a lockstep A/B round, bench.measurement.baton)."""
    global _swept_stale_dirs
    if not _swept_stale_dirs:
        _swept_stale_dirs = True
        remove_stale_case_dirs()
    started = time.perf_counter()
    budget = case.budget
    limit = budget.memory_limit_mib * MIB if budget.memory_limit_mib else None
    code = code or WorkerCode.this_checkout()
    with tempfile.TemporaryDirectory(prefix=_CASE_DIR_PREFIX) as tmp:
        tmpdir = Path(tmp)
        me = psutil.Process()
        (tmpdir / _OWNER_FILE).write_text(f"{me.pid} {me.create_time()}")
        case_file, out_file, err_file = (tmpdir / n for n in ("case.json", "out.json", "err"))
        version = code.record_version()
        case_file.write_text(json.dumps(case_for_worker(case.to_dict(), SCHEMA_VERSION, version)))
        # A compile's cold start is a cold compile, not whatever an earlier case left in
        # inductor's on-disk cache.
        per_run = {"TORCHINDUCTOR_CACHE_DIR": str(tmpdir / "inductor"),
                   "TRITON_CACHE_DIR": str(tmpdir / "triton"), **(run_env or {})}
        env = _start_up_env(case, code)
        forkable = servers is not None and case.device == "cpu" and not case.count_instructions
        preload = _preload(case) if forkable else ()
        server = servers.get(code.source, env, preload) if forkable else None
        refusal = servers.refusal(code.source, env, preload) if forkable else None
        callgrind_out = tmpdir / "callgrind.out"
        proc = None
        if server is not None:
            try:
                proc = server.start([str(case_file), str(out_file)], err_file, per_run,
                                    preload)
            except ForkHazard as exc:  # the case's own imports made forking unsafe
                servers.give_up(server, str(exc))
                server, refusal = None, str(exc)
        if proc is None:
            prefix = instructions.command_prefix(callgrind_out) \
                if case.count_instructions else []
            with open(err_file, "wb") as err:
                proc = subprocess.Popen(
                    [*prefix, sys.executable, "-P", "-m", "bench.runners.worker",
                     str(case_file), str(out_file)],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                    env={**env, **per_run, **instructions.worker_env(prefix)},
                    start_new_session=True, preexec_fn=die_with_parent(os.getpid()),
                )
        timeout_s = budget.timeout_s * timeout_scale
        if case.count_instructions:
            timeout_s = max(timeout_s, instructions.VALGRIND_TIMEOUT_S)
        watched = case if timeout_s == budget.timeout_s else dataclasses.replace(
            case, budget=dataclasses.replace(budget, timeout_s=timeout_s))
        try:
            result = _watch(watched, proc, limit, started, err_file, out_file, version)
        except BaseException:
            _kill_group(proc)  # Ctrl-C, or anything else: never leave the worker running
            raise
        if case.count_instructions:
            _add_instruction_count(result, callgrind_out)
    result.worker = {**(result.worker or {}),
                     "started": _how_started(server, servers, case, refusal)}
    result.duration_s = time.perf_counter() - started
    return result


def _add_instruction_count(result: CaseResult, callgrind_out: Path) -> None:
    """Instructions per step from callgrind's output into the record; a count that cannot
    be read is an error with its reason, never a silent zero."""
    if result.status != "ok":
        return
    total = instructions.read_total(callgrind_out)
    steps = result.instructions.steps if result.instructions is not None else None
    if not total or not steps or steps <= 0:
        result.status = "error"
        result.reason = ("no instruction count: " + (
            "this worker's bench does not count instructions" if not steps else
            "callgrind wrote no total"))
        return
    result.instructions = InstructionCount(steps, total / steps, instructions.METHOD)


def _start_up_env(case: CaseSpec, code: WorkerCode) -> dict[str, str]:
    """The worker's environment as its interpreter starts (a fork server's too)."""
    env = {**worker_env(case.budget.allocator), "PYTHONUNBUFFERED": "1",
           "PYTHONFAULTHANDLER": "1"}
    env.update(code.env)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(code.source), env.get("PYTHONPATH", "")) if p)
    return env


def _preload(case: CaseSpec) -> tuple[str, ...]:
    """What a fork server imports before forking this case's worker: its workload's module,
    the modules that case imports lazily (Workload.case_imports: a user model's factory
    module among them), and for a training phase torch._dynamo; all of them modules the
    worker would import anyway."""
    from bench.workloads import get_workload  # torch kept out of the parent's start-up
    try:
        workload = get_workload(case.workload)
    except KeyError:
        return ()
    # A training phase builds a torch.optim optimizer, which imports torch._dynamo.
    trains = (DYNAMO,) if case.phase == "train" else ()
    return (workload.__module__, *workload.case_imports(case), *trains)


def _how_started(server, servers: ForkServers | None, case: CaseSpec,  # noqa: ANN001
                 refusal: str | None) -> str:
    if server is not None:
        return f"forked by a fork server (pid {server.pid}) that had imported " \
               f"{', '.join(server.preloaded)}"
    if servers is None:
        return "spawned (a fresh interpreter)"
    if case.device != "cpu":
        return f"spawned (a fresh interpreter; {case.device} workers are never forked)"
    if case.count_instructions:
        return "spawned (a fresh interpreter, under callgrind)"
    return f"spawned (a fresh interpreter; {(refusal or 'no fork server')[:300]})"


def _wait_or_kill(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the worker, killing its group past ``timeout_s``; whether it timed out.

    Nothing to poll for: block in waitpid (Popen.wait(timeout) would poll every 50 ms), so
    the watchdog never wakes beside the worker: on a 2-core host each wake-up can stall one
    of the worker's compute threads."""
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    alarm = threading.Timer(timeout_s, on_timeout)
    alarm.daemon = True  # never keeps an interrupted sweep alive
    alarm.start()
    try:
        proc.wait()
    finally:
        alarm.cancel()
    return timed_out.is_set()


def _watch(case: CaseSpec, proc: subprocess.Popen, limit: float | None, started: float,
           err_file: Path, out_file: Path, version: int) -> CaseResult:
    """Wait for the worker under the timeout and memory limit; its result or failure."""
    budget = case.budget
    ps = psutil.Process(proc.pid)
    peak_rss = 0
    verdict: tuple[str, str] | None = None
    timeout = (STATUS_TIMEOUT, f"no result after {budget.timeout_s:g} s; worker killed")
    if limit is None and _wait_or_kill(proc, budget.timeout_s):
        verdict = timeout
    while verdict is None and proc.poll() is None:
        elapsed = time.perf_counter() - started
        rss = 0
        if limit is not None:
            try:
                rss = tree_rss_bytes(ps)
            except psutil.NoSuchProcess:
                rss = 0
        peak_rss = max(peak_rss, rss)
        if elapsed > budget.timeout_s:
            verdict = timeout
        elif limit is not None and rss > limit:
            verdict = (STATUS_OOM, f"worker RSS {rss / MIB:.0f} MiB exceeded the "
                                   f"memory limit {budget.memory_limit_mib:g} MiB; "
                                   "worker killed")
        if verdict:
            _kill_group(proc)
            break
        time.sleep(POLL_INTERVAL_S)
    else:
        # The worker has exited; reap any children it left in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = _tail(err_file)
    if verdict:
        return _failed(case, *verdict, stderr, peak_rss, started)
    if proc.returncode != 0 or not out_file.exists():
        return _failed(case, STATUS_CRASHED, _describe_exit(proc.returncode), stderr,
                       peak_rss, started)
    dropped: list[str] = []
    try:
        data = migrate_case(json.loads(out_file.read_text()), version, SCHEMA_VERSION)
        result = from_dict(CaseResult, data, dropped=dropped)
    except (json.JSONDecodeError, SchemaError, AttributeError, TypeError) as exc:
        return _failed(case, STATUS_CRASHED, f"unreadable worker result: {exc}", stderr,
                       peak_rss, started)
    if dropped:  # a worker of another bench version (bench ab): its record, less these
        result.warnings.append(f"the worker wrote fields this bench does not read, left out: "
                               f"{', '.join(dropped[:8])}")
    # Workers of older versions did not record these; the parent's case is the truth.
    result.label = case.label
    result.parity_reference = dict(case.parity_reference)
    result.slo = dict(case.slo)
    if peak_rss:
        result.details["watchdog_peak_rss_mib"] = peak_rss / MIB
    if result.status != "ok" and not result.stderr_tail:
        result.stderr_tail = stderr
    return result
