"""Across ranks: a case trained across processes (``parallel`` = ddp | fsdp2 | tp | pp |
fsdp2_tp | hogwild, ``world_size`` ranks).

Inside the case's isolated worker, ``AcrossRanks.run`` starts the ranks with torch's
elastic launcher (``torch.distributed.launcher.api.elastic_launch``: a c10d rendezvous on
localhost, one process per rank, spawned), so a rank that dies takes its case down as a
status and the worker's watchdog still kills every rank of a hung case (they share its
process group). Across nodes the same rank code runs under ``torchrun``
(bench.runners.ranks).

Each rank: a process group (gloo on a CPU, with floor(cores / local ranks) threads;
NCCL on CUDA, one GPU per local rank, and a gloo group beside it for the sampler's own
messages), the workload's phase built for its rank (bench.variants.parallel wraps or
shards the model; the batch stream hands it its slice), the sampler run in lock step
(bench.measurement.lockstep: each step's duration is the slowest rank's) inside the same
trackers as every mode's timed region (bench.modes.trackers: each rank its own
interference, clocks and energy), the same step without gradient communication, the FLOP
count and the task metrics. Rank 0 gathers every rank's run and assembles the record with
the functions every mode uses (bench.modes.record).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import socket
import statistics
import tempfile
import traceback
import uuid
from typing import Any

import psutil
import torch
from torch.distributed.elastic.multiprocessing.errors import record

from bench.measurement.communication import METHOD as COMMUNICATION_METHOD
from bench.measurement.communication import (
    PAIRED_ROUNDS,
    PairedDifference,
    blocked_share,
    paired_difference,
)
from bench.measurement.flops import FlopCount
from bench.measurement.lockstep import (
    LockstepPhase,
    LockstepTimer,
    collective_clock,
    straggler_figures,
)
from bench.measurement.memory import MemoryTracker
from bench.measurement.sampler import measure
from bench.measurement.timers import timer_for
from bench.measurement.training_run import TrainingTrace, run_to_target
from bench.modes import register
from bench.modes.base import Mode
from bench.modes.record import (
    record_outcome,
    record_timing,
    record_training_run,
    sampled_timing,
    training_run_timing,
)
from bench.modes.trackers import TrackedFigures, Trackers, combine_ranks, record_figures
from bench.results.schema import (
    STATUS_ERROR,
    STATUS_OOM,
    CaseResult,
    MemoryResult,
    ParallelResult,
    RankReport,
    TimingResult,
)
from bench.spec.model import CaseSpec, is_distributed
from bench.variants.parallel import (
    SHARED_DIR_ENV,
    RankInfo,
    no_gradient_sync,
    process_group_backend,
)
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads._training import memory_split
from bench.workloads.base import Outcome, RunContext

LAUNCHER = ("torch.distributed.launcher.api.elastic_launch (torchrun's launcher): c10d "
            "rendezvous, one spawned process per rank, no restarts")
TRACEBACK_TAIL_CHARS = 4000


def threads_per_rank(case: CaseSpec, local_ranks: int) -> int:
    asked = case.axes.get("threads", 0)
    if asked:
        return asked
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // local_ranks)


@dataclasses.dataclass
class LeadRun:
    """What rank 0 alone sends: the figures every rank shares."""

    timing: TimingResult  # the case's: each step the slowest rank's
    warnings: list[str]
    samples_per_step: int  # per rank
    sample_unit: str
    outcome: Outcome
    memory: MemoryResult | None
    no_sync: PairedDifference | None = None  # ddp, fsdp2, fsdp2_tp
    # tp on a CPU: the share of profiled steps rank 0 spent blocked in communication.
    blocked_share: float | None = None
    flops: FlopCount | None = None
    trace: TrainingTrace | None = None  # time-to-accuracy: the seed's run


@dataclasses.dataclass
class RankTimed:
    """What one rank's timed region gave (its own steps, memory split and samples)."""

    trials: list[list[float]]  # this rank's own step durations, per trial
    split: dict[str, Any]  # bench.workloads._training.memory_split of this rank
    samples: int  # this rank's samples in the region
    lead: LeadRun | None  # rank 0 only
    pipeline_bubble: float | None = None  # pp: this stage's median idle share per step


@dataclasses.dataclass
class RankRun:
    """What one rank sends rank 0 (pickled through all_gather_object)."""

    report: RankReport
    local_trials: list[list[float]]
    tracked: TrackedFigures
    samples: int  # this rank's samples in its timed region
    lead: LeadRun | None = None


def _trainer_of(phase: Any, workload: str) -> Any:
    trainer = getattr(phase, "trainer", None)
    if trainer is None:
        raise TypeError(f"workload {workload}'s phase has no trainer: parallel modes train "
                        "through bench.workloads._training.Trainer")
    return trainer


def _rank_trackers(case: CaseSpec, local_ranks: int) -> Trackers:
    """This rank's trackers: the case's own CPU is every process its launcher started
    (all the local ranks), so a rank does not count its siblings as other processes."""
    return Trackers(case.device, torch.get_num_threads() * local_ranks,
                    case.budget.contended_above, root=psutil.Process().parent())


def _across(case: CaseSpec, world: int) -> str:
    return (f"; across {world} ranks (parallel={case.parallel}), each step the "
            "slowest rank's")


def _sampled(case: CaseSpec, phase: Any, trainer: Any, ranks: RankInfo, control: Any,
             trackers: Trackers) -> RankTimed:
    """The sampler in lock step (tracked), then (ddp, fsdp2, fsdp2_tp) the same step without
    gradient sync."""
    timer = LockstepTimer(timer_for(case.device), control)
    with trackers, phase.session():
        measurement = measure(phase.step, timer, case.budget, clock=collective_clock(control))
    bubbles = phase.pipeline_bubbles()
    bubble = statistics.median(bubbles[-measurement.steps_run:]) if bubbles else None
    split = memory_split(trainer.model, trainer.optimizer, 0)
    no_sync = None
    if ranks.mode in ("ddp", "fsdp2", "fsdp2_tp"):
        def unsynced() -> object:
            with no_gradient_sync(trainer.model, ranks):
                return phase.step()

        # Blocks about a trial long; every rank reads the same (lock-step) durations.
        steps = max(1, round(case.budget.trial_time_s / measurement.summary.median))
        with phase.session():
            no_sync = paired_difference(phase.step, unsynced,
                                        LockstepTimer(timer_for(case.device), control).time_block,
                                        steps)
    blocked = None
    if ranks.mode == "tp" and case.device == "cpu":  # no step without its communication
        with phase.session():
            blocked = blocked_share(phase.step)
    # The throughput trials' blocks: the latency trials (block-timed CUDA) come after them.
    blocks = timer.local[:len(timer.local) - len(measurement.latency_trials)]
    flops = phase.flop_count()
    outcome = phase.finish()  # on every rank: evaluation may take collectives
    lead = None
    if ranks.rank == 0:
        lead = LeadRun(
            timing=sampled_timing(measurement, phase.step_description
                                  + _across(case, ranks.world_size)),
            warnings=list(measurement.warnings), samples_per_step=phase.samples_per_step,
            sample_unit=phase.sample_unit, outcome=outcome, memory=None,
            no_sync=no_sync, blocked_share=blocked, flops=flops)
    return RankTimed(blocks[-len(measurement.trials):], split,
                     measurement.steps_run * phase.samples_per_step, lead, bubble)


def _to_target(case: CaseSpec, phase: Any, trainer: Any, ranks: RankInfo, control: Any,
               trackers: Trackers) -> RankTimed:
    """Time-to-accuracy: this seed's run to its target (tracked), every rank stopping
    together."""
    metric, _ = get_workload(case.workload).watched_metric(case)
    timer = LockstepTimer(timer_for(case.device), control)
    together = LockstepPhase(phase, ranks.world_size, control)
    with trackers, phase.session():
        trace = run_to_target(together, timer, case.training, case.seed, metric,
                              int(case.axes.get("early_stopping", 0)),
                              clock=collective_clock(control))
    trace.run.pid = os.getpid()
    outcome = phase.run_outcome(trace.run.curve[-1].metrics)
    lead = None
    if ranks.rank == 0:
        lead = LeadRun(
            timing=training_run_timing(trace, timer.name, timer.description,
                                       phase.step_description
                                       + _across(case, ranks.world_size)),
            warnings=[], samples_per_step=phase.samples_per_step,
            sample_unit=phase.sample_unit, outcome=outcome, memory=None, trace=trace)
    bubbles = phase.pipeline_bubbles()
    return RankTimed(timer.local, memory_split(trainer.model, trainer.optimizer, 0),
                     trace.run.steps * phase.samples_per_step, lead,
                     statistics.median(bubbles[-trace.run.steps:]) if bubbles else None)


def _run_rank(case: CaseSpec, ranks: RankInfo, control: Any, local_ranks: int) -> RankRun:
    precision = get_precision(case.precision)
    ctx = RunContext(device=case.device, precision=precision, seed=case.seed, ranks=ranks)
    trackers = _rank_trackers(case, local_ranks)
    with MemoryTracker(case.device) as tracker:
        phase = get_workload(case.workload).prepare(case, ctx)
        trainer = _trainer_of(phase, case.workload)
        timed = (_to_target if case.training is not None else _sampled)(
            case, phase, trainer, ranks, control, trackers)
    own = [d for t in timed.trials for d in t]
    split = timed.split
    split.pop("activations_saved_mib", None)
    split.pop("method", None)
    tracked = trackers.figures(timed.samples)
    report = RankReport(rank=ranks.rank, host=socket.gethostname(), pid=os.getpid(),
                        step_median_s=statistics.median(own), step_samples_s=own,
                        memory_split=split,
                        peak_rss_mib=tracker.report.peak_rss_mib if tracker.report else None,
                        cuda_peak_allocated_mib=(tracker.report.cuda_peak_allocated_mib
                                                 if tracker.report else None),
                        interference=tracked.interference, energy=tracked.energy,
                        clocks=tracked.clocks, pipeline_bubble=timed.pipeline_bubble)
    if timed.lead is not None:
        timed.lead.memory = tracker.report
    return RankRun(report, timed.trials, tracked, timed.samples, timed.lead)


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
    torch.set_num_threads(threads_per_rank(case, local_ranks))
    dist.init_process_group(process_group_backend(case.device),
                            timeout=dt.timedelta(seconds=case.budget.timeout_s))
    try:
        control = dist.new_group(backend="gloo") if case.device == "cuda" else None
        ranks = RankInfo.of_case(case, dist.get_rank(), dist.get_world_size(), local_rank)
        if ranks.world_size != case.world_size:
            raise ValueError(f"case {case.case_id} has world_size "
                             f"{case.world_size} but was launched with "
                             f"{ranks.world_size} ranks (nodes x processes per node)")
        run = _run_rank(case, ranks, control, local_ranks)
        gathered: list[Any] = [None] * ranks.world_size
        dist.all_gather_object(gathered, run, group=control)
    finally:
        dist.destroy_process_group()
    return gathered if ranks.rank == 0 else None


METHOD = ("step time: per step the slowest rank's (all-reduce MAX of each block's per-step "
          "durations); straggler spread: per step (slowest - fastest) / slowest over the "
          "ranks' own durations, median and max over the timed steps; exposed "
          "communication: the step minus the same step with gradient sync off, in "
          f"{PAIRED_ROUNDS} paired rounds of a block (about a trial) of each, ABBA order, "
          "the mean difference with its Student-t 95% CI (ddp: no_sync(), the all-reduce "
          "skipped; fsdp2: "
          "set_requires_gradient_sync(False), the reduce-scatter skipped and with it the "
          "optimizer update of the sharded parameters, its all-gathers kept; fsdp2_tp: "
          "the same over its dp mesh, the tensor-parallel activations' all-reduces kept; "
          f"hogwild has none; {COMMUNICATION_METHOD}; pp: in its bubble); memory split "
          "per rank: that rank's tensors (its shards under fsdp2; "
          "hogwild's parameters are one shared mapping, counted by every rank); "
          "interference, clocks and energy: each rank's own around its timed region; pp "
          "bubble per stage: 1 - (its forward and backward chunks' time) / (the "
          "schedule's run from the first micro-batch in to the last gradient out), "
          "median over the timed steps (perf_counter; CUDA events on CUDA), the case's "
          "the mean over the stages")


def assemble(case: CaseSpec, runs: list[RankRun], result: CaseResult, nnodes: int,
             threads: int) -> None:
    """The case's record from every rank's run (rank 0's speaks for the shared figures)."""
    runs = sorted(runs, key=lambda r: r.report.rank)
    lead, world = runs[0].lead, len(runs)
    assert lead is not None, "rank 0 sends the case's shared figures"
    result.warnings.extend(lead.warnings)
    # The global batch: every data-parallel rank's own (tensor-parallel ranks share theirs).
    data_parallel = RankInfo.of_case(case, 0, world).data_parallel_size
    total = lead.samples_per_step * data_parallel
    record_timing(result, lead.timing, total, lead.sample_unit)
    result.throughput.method += f"; samples over all {world} ranks (global batch)"
    record_figures(result, combine_ranks([r.report.host for r in runs],
                                         [r.tracked for r in runs],
                                         sum(r.samples for r in runs)))
    spread = straggler_figures([[d for t in r.local_trials for d in t] for r in runs])
    no_sync, timing = lead.no_sync, lead.timing
    exposed = no_sync.mean_s if no_sync is not None else None
    if lead.blocked_share is not None:
        exposed = lead.blocked_share * timing.median_s
    result.parallel = ParallelResult(
        mode=case.parallel, world_size=world, nnodes=nnodes,
        process_group=process_group_backend(case.device), threads_per_rank=threads,
        launcher=LAUNCHER, global_batch=total,
        samples_per_s_per_device=result.throughput.value / world,
        samples_per_s_total=result.throughput.value,
        straggler_median_spread=spread["median_spread"],
        straggler_max_spread=spread["max_spread"],
        no_sync_step_s=no_sync.without_s if no_sync is not None else None,
        exposed_communication_s=exposed,
        exposed_communication_ci_s=list(no_sync.ci_s) if no_sync is not None else None,
        ranks=[r.report for r in runs], method=METHOD, data_parallel_size=data_parallel,
        pipeline_bubble=_mean_bubble([r.report for r in runs]))
    if lead.memory is not None:
        result.memory = lead.memory
    result.details["parallel_memory_note"] = (
        "memory: rank 0's own process; every rank's peak RSS and memory split are under "
        "parallel.ranks")
    if lead.trace is not None:
        record_training_run(case, lead.trace, lead.outcome, result)
        return
    # Per device: one rank's FLOPs over the step time, against one device's peak.
    record_outcome(case, lead.outcome, result, lead.flops)


def _mean_bubble(reports: list[RankReport]) -> float | None:
    bubbles = [r.pipeline_bubble for r in reports if r.pipeline_bubble is not None]
    return statistics.fmean(bubbles) if bubbles else None


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


@register
class AcrossRanks(Mode):
    name = "across_ranks"
    description = "ranks of a process group on this machine (the parallel axis)"
    order = 10

    @classmethod
    def claims(cls, case: CaseSpec) -> bool:
        return is_distributed(case)

    def run(self, case: CaseSpec, result: CaseResult) -> None:
        """Start the case's ranks on this machine (elastic_launch) and fill ``result``;
        each rank tracks its own timed region."""
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch  # start-up

        world = case.world_size
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world,
                              run_id=f"bench-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                              rdzv_endpoint="localhost:0", max_restarts=0,
                              monitor_interval=0.1, start_method="spawn")
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
        assemble(case, returned[0], result, nnodes=1, threads=threads_per_rank(case, world))
