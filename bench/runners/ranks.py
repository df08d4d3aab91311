"""A case trained across processes (``parallel`` = ddp | fsdp2, ``world_size`` ranks).

Inside the case's isolated worker, ``run_ranks`` starts the ranks with torch's elastic
launcher (``torch.distributed.launcher.api.elastic_launch``: a c10d rendezvous on
localhost, one process per rank, spawned), so a rank that dies takes its case down as a
status and the worker's watchdog still kills every rank of a hung case (they share its
process group). Across nodes the same rank code runs under ``torchrun``:

    torchrun --nnodes 2 --node-rank K --nproc-per-node P --rdzv-backend c10d \\
        --rdzv-endpoint HOST:PORT -m bench.runners.ranks --suite SUITE.toml \
        --case CASE_ID --out OUT.json

where rank 0 appends the case's record to the result file OUT.json.

Each rank: a process group (gloo on a CPU, with floor(cores / local ranks) threads;
NCCL on CUDA, one GPU per local rank, and a gloo group beside it for the sampler's own
messages), the workload's phase built for its rank (bench.variants.parallel wraps or
shards the model; the batch stream hands it its slice), the sampler run in lock step
(bench.measurement.lockstep: each step's duration is the slowest rank's), the same step
without gradient communication, the FLOP count and the task metrics. Rank 0 gathers
every rank's report and assembles the record.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import traceback
import types
import uuid
from pathlib import Path
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from bench.measurement.fingerprint import fingerprint
from bench.measurement.lockstep import (
    LockstepPhase,
    LockstepTimer,
    collective_clock,
    straggler_figures,
)
from bench.measurement.memory import MemoryTracker
from bench.measurement.sampler import measure
from bench.measurement.timers import timer_for
from bench.measurement.training_run import run_to_target
from bench.results.schema import (
    STATUS_DIVERGED,
    STATUS_ERROR,
    STATUS_OOM,
    AccuracyResult,
    CaseResult,
    ParallelResult,
    RankReport,
    RunRecord,
    ThroughputResult,
)
from bench.results.store import ResultStore, exclusive_output
from bench.runners.plan import plan_suite
from bench.runners.sweep import new_run_info
from bench.spec import load_suite
from bench.spec.model import CaseSpec
from bench.variants.parallel import (
    SHARED_DIR_ENV,
    RankInfo,
    no_gradient_sync,
    process_group_backend,
)
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads._training import memory_split
from bench.workloads.base import RunContext

LAUNCHER = ("torch.distributed.launcher.api.elastic_launch (torchrun's launcher): c10d "
            "rendezvous, one spawned process per rank, no restarts")
TRACEBACK_TAIL_CHARS = 4000


def is_distributed(case: CaseSpec) -> bool:
    return case.axes.get("parallel", "none") != "none"


def _threads_per_rank(case: CaseSpec, local_ranks: int) -> int:
    asked = case.axes.get("threads", 0)
    if asked:
        return asked
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // local_ranks)


@dataclasses.dataclass
class RankRun:
    """What one rank sends rank 0 (pickled through all_gather_object)."""

    report: RankReport
    local_trials: list[list[float]]
    measurement: Any = None  # the sampler's Measurement (the same on every rank)
    no_sync: Any = None
    outcome: Any = None
    flops: Any = None
    memory: Any = None
    phase: dict[str, Any] = dataclasses.field(default_factory=dict)
    trace: Any = None  # time-to-accuracy: the seed's TrainingTrace


def _trainer_of(phase: Any, workload: str) -> Any:
    trainer = getattr(phase, "trainer", None)
    if trainer is None:
        raise TypeError(f"workload {workload}'s phase has no trainer: parallel modes train "
                        "through bench.workloads._training.Trainer")
    return trainer


def _sampled(case: CaseSpec, phase: Any, trainer: Any, ranks: RankInfo,
             control: Any) -> dict[str, Any]:
    """The sampler in lock step, then (ddp, fsdp2) the same step without gradient sync."""
    timer = LockstepTimer(timer_for(case.device), control)
    with phase.session():
        measurement = measure(phase.step, timer, case.budget, clock=collective_clock(control))
    split = memory_split(trainer.model, trainer.optimizer, 0)
    no_sync = None
    if ranks.mode in ("ddp", "fsdp2"):
        quick = dataclasses.replace(case.budget, max_trials=case.budget.min_trials,
                                    max_time_s=case.budget.max_time_s / 2)

        def unsynced() -> object:
            with no_gradient_sync(trainer.model, ranks):
                return phase.step()

        with phase.session():
            no_sync = measure(unsynced, LockstepTimer(timer_for(case.device), control), quick,
                              clock=collective_clock(control))
    # The throughput trials' blocks: the latency trials (block-timed CUDA) come after them.
    blocks = timer.local[:len(timer.local) - len(measurement.latency_trials)]
    return {"trials": blocks[-len(measurement.trials):], "split": split,
            "measurement": measurement, "no_sync": no_sync, "flops": phase.flop_count(),
            "outcome": phase.finish(), "timer": timer}


def _to_target(case: CaseSpec, phase: Any, trainer: Any, ranks: RankInfo,
               control: Any) -> dict[str, Any]:
    """Time-to-accuracy: this seed's run to its target, every rank stopping together."""
    metric, _ = get_workload(case.workload).watched_metric(case)
    timer = LockstepTimer(timer_for(case.device), control)
    together = LockstepPhase(phase, ranks.world_size, control)
    with phase.session():
        trace = run_to_target(together, timer, case.training, case.seed, metric,
                              int(case.axes.get("early_stopping", 0)),
                              clock=collective_clock(control))
    trace.run.pid = os.getpid()
    outcome = phase.run_outcome(trace.run.curve[-1].metrics)
    return {"trials": timer.local, "split": memory_split(trainer.model, trainer.optimizer, 0),
            "trace": trace, "outcome": outcome, "timer": timer}


def _run_rank(case: CaseSpec, ranks: RankInfo, control: Any) -> RankRun:
    precision = get_precision(case.axes.get("precision", "fp32"))
    ctx = RunContext(device=case.device, precision=precision, seed=case.seed, ranks=ranks)
    with MemoryTracker(case.device) as tracker:
        phase = get_workload(case.workload).prepare(case, ctx)
        trainer = _trainer_of(phase, case.workload)
        run = (_to_target if case.training is not None else _sampled)(
            case, phase, trainer, ranks, control)
    own = [d for t in run["trials"] for d in t]
    split = run["split"]
    split.pop("activations_saved_mib", None)
    split.pop("method", None)
    report = RankReport(rank=ranks.rank, host=socket.gethostname(), pid=os.getpid(),
                        step_median_s=statistics.median(own), step_samples_s=own,
                        memory_split=split,
                        peak_rss_mib=tracker.report.peak_rss_mib if tracker.report else None,
                        cuda_peak_allocated_mib=(tracker.report.cuda_peak_allocated_mib
                                                 if tracker.report else None))
    if ranks.rank != 0:  # rank 0 speaks for the case: the others send their own figures
        return RankRun(report, run["trials"])
    timer = run["timer"]
    return RankRun(report, run["trials"], run.get("measurement"), run.get("no_sync"),
                   run["outcome"], run.get("flops"), tracker.report,
                   {"samples_per_step": phase.samples_per_step,
                    "sample_unit": phase.sample_unit,
                    "step_description": phase.step_description,
                    "timer": timer.name, "timer_description": timer.description},
                   run.get("trace"))


@record  # a rank's exception reaches the launcher with its traceback (an error file)
def rank_main(case_data: dict[str, Any]) -> list[RankRun] | None:
    """One rank (started by elastic_launch or torchrun, which set RANK, LOCAL_RANK,
    WORLD_SIZE, LOCAL_WORLD_SIZE and the rendezvous): every rank's run on rank 0, else None."""
    import torch.distributed as dist  # kept out of start-up

    case = CaseSpec.from_dict(case_data)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if case.device == "cuda":
        torch.cuda.set_device(local_rank)
    torch.set_num_threads(_threads_per_rank(case, local_ranks))
    dist.init_process_group(process_group_backend(case.device),
                            timeout=dt.timedelta(seconds=case.budget.timeout_s))
    try:
        control = dist.new_group(backend="gloo") if case.device == "cuda" else None
        ranks = RankInfo(case.axes["parallel"], dist.get_rank(), dist.get_world_size(),
                         local_rank)
        if ranks.world_size != case.axes.get("world_size", 1):
            raise ValueError(f"case {case.case_id} has world_size "
                             f"{case.axes.get('world_size', 1)} but was launched with "
                             f"{ranks.world_size} ranks (nodes x processes per node)")
        run = _run_rank(case, ranks, control)
        gathered: list[Any] = [None] * ranks.world_size
        dist.all_gather_object(gathered, run, group=control)
    finally:
        dist.destroy_process_group()
    return gathered if ranks.rank == 0 else None


METHOD = ("step time: per step the slowest rank's (all-reduce MAX of each block's per-step "
          "durations); straggler spread: per step (slowest - fastest) / slowest over the "
          "ranks' own durations, median and max over the timed steps; exposed "
          "communication: median step minus the median of the same step with gradient sync "
          "off (ddp: no_sync(), the all-reduce skipped; fsdp2: "
          "set_requires_gradient_sync(False), the reduce-scatter skipped and with it the "
          "optimizer update of the sharded parameters, its all-gathers kept; hogwild has "
          "none); memory split per rank: that rank's tensors (its shards under fsdp2; "
          "hogwild's parameters are one shared mapping, counted by every rank)")


def _case_timing(case: CaseSpec, lead: RankRun, world: int) -> Any:
    from bench.runners.worker import _run_timing, _timing  # the worker imports this module

    phase = lead.phase
    across = (f"; across {world} ranks (parallel={case.axes['parallel']}), each step the "
              "slowest rank's")
    if lead.trace is None:
        return _timing(lead.measurement, phase["step_description"] + across)
    timer = types.SimpleNamespace(name=phase["timer"], description=phase["timer_description"])
    described = types.SimpleNamespace(step_description=phase["step_description"] + across)
    return _run_timing(lead.trace, timer, described)


def assemble(case: CaseSpec, runs: list[RankRun], result: CaseResult, nnodes: int,
             threads: int) -> None:
    """The case's record from every rank's run (rank 0's speaks for the shared figures)."""
    from bench.measurement.flops import compute_record  # kept out of start-up
    from bench.runners.worker import divergence, record_training_run  # imports this module

    runs = sorted(runs, key=lambda r: r.report.rank)
    lead, world = runs[0], len(runs)
    timing = result.timing = _case_timing(case, lead, world)
    if lead.measurement is not None:
        result.warnings.extend(lead.measurement.warnings)
    total = lead.phase["samples_per_step"] * world
    unit = f"{lead.phase['sample_unit']}/s"
    result.throughput = ThroughputResult.from_timing(timing, total, unit)
    result.throughput.method += f"; samples over all {world} ranks (global batch)"
    spread = straggler_figures([[d for t in r.local_trials for d in t] for r in runs])
    no_sync_s = lead.no_sync.summary.median if lead.no_sync is not None else None
    result.parallel = ParallelResult(
        mode=case.axes["parallel"], world_size=world, nnodes=nnodes,
        process_group=process_group_backend(case.device), threads_per_rank=threads,
        launcher=LAUNCHER, global_batch=total,
        samples_per_s_per_device=result.throughput.value / world,
        samples_per_s_total=result.throughput.value,
        straggler_median_spread=spread["median_spread"],
        straggler_max_spread=spread["max_spread"], no_sync_step_s=no_sync_s,
        exposed_communication_s=(timing.median_s - no_sync_s) if no_sync_s else None,
        ranks=[r.report for r in runs], method=METHOD)
    if lead.memory is not None:
        result.memory = lead.memory
    result.details["parallel_memory_note"] = (
        "memory: rank 0's own process; every rank's peak RSS and memory split are under "
        "parallel.ranks")
    outcome = lead.outcome
    if lead.trace is not None:
        record_training_run(case, lead.trace, outcome, result)
        return
    result.accuracy = AccuracyResult.for_case(
        case, outcome.metrics,
        outcome.task_metric or get_workload(case.workload).task_metric(case.phase))
    result.details.update(outcome.details)
    result.model, result.classes = outcome.model, outcome.classes
    if lead.flops is not None:
        # Per device: one rank's FLOPs over the step time, against one device's peak.
        result.compute = compute_record(lead.flops, timing.median_s, case.device)
    diverged = divergence(outcome.metrics, outcome.details)
    if diverged:
        result.status, result.reason = STATUS_DIVERGED, diverged


def _failure(exc: BaseException, result: CaseResult) -> None:
    """A rank's exception (ChildFailedError from the launcher) as the case's status."""
    failures = getattr(exc, "failures", None)
    if not failures:
        result.status, result.reason = STATUS_ERROR, f"{type(exc).__name__}: {exc}"[:500]
        result.stderr_tail = traceback.format_exc()[-TRACEBACK_TAIL_CHARS:]
        return
    rank, failure = min(failures.items())
    message = failure.message
    if isinstance(message, dict):
        text = str(message.get("message", ""))
        stack = str(message.get("extraInfo", {}).get("py_callstack", ""))
    else:
        text, stack = str(message), ""
    if not text or text.startswith("To enable traceback"):
        text = f"exit code {failure.exitcode}" + (
            f" (signal {failure.signal_name()})" if failure.exitcode < 0 else "")
    oom = "OutOfMemoryError" in text or "MemoryError" in text
    result.status = STATUS_OOM if oom else STATUS_ERROR
    result.reason = f"rank {rank} of {result.axes.get('world_size')}: {text}"[:500]
    result.stderr_tail = stack[-TRACEBACK_TAIL_CHARS:] or None


def run_ranks(case: CaseSpec, result: CaseResult) -> None:
    """Start the case's ranks on this machine (elastic_launch) and fill ``result``."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch  # start-up

    world = case.axes.get("world_size", 1)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world,
                          run_id=f"bench-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    result.worker["launcher"] = LAUNCHER
    shared = tempfile.mkdtemp(prefix="bench-ranks-", dir="/dev/shm" if os.path.isdir(
        "/dev/shm") else None)
    os.environ[SHARED_DIR_ENV] = shared  # the ranks inherit it (hogwild's mapping)
    try:
        returned = elastic_launch(config, rank_main)(case.to_dict())
    except Exception as exc:  # noqa: BLE001 - a rank's failure is the case's status
        _failure(exc, result)
        return
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assemble(case, returned[0], result, nnodes=1, threads=_threads_per_rank(case, world))


def main(argv: list[str]) -> int:
    """Under torchrun (several nodes): run this rank of one case of a suite; rank 0
    appends the case's record to the result file (created if missing, resumable)."""
    parser = argparse.ArgumentParser(prog="python -m bench.runners.ranks")
    parser.add_argument("--suite", required=True)
    parser.add_argument("--case", required=True, help="the case id (bench list SUITE)")
    parser.add_argument("--out", required=True, help="result file rank 0 appends the case to")
    args = parser.parse_args(argv)
    suite = load_suite(args.suite)
    planned = {p.case_id: p for p in plan_suite(suite)}
    if args.case not in planned or not is_distributed(planned[args.case].spec):
        raise SystemExit(f"{args.suite}: no case {args.case!r} with parallel ddp or fsdp2 "
                         "(bench list shows the case ids)")
    case = planned[args.case].spec
    started = time.perf_counter()
    runs = rank_main(case.to_dict())
    if runs is None:
        return 0
    result = CaseResult.for_case(case, "ok")
    result.worker = {"pid": os.getpid(), "python": sys.version.split()[0],
                     "launcher": "torchrun (c10d rendezvous; its nodes and ranks as launched)"}
    nnodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))  # torchrun: the nodes that joined
    assemble(case, runs, result, nnodes=nnodes,
             threads=_threads_per_rank(case, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    result.duration_s = time.perf_counter() - started
    result.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out = Path(args.out)
    with exclusive_output(out):
        store = ResultStore.open(out) if out.exists() else ResultStore.create(
            out, RunRecord(run=new_run_info(suite, None), fingerprint=fingerprint(suite.path)))
        store.append(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
