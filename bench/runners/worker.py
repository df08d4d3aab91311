"""The worker: runs one case in a fresh interpreter and writes its result as JSON.

Invoked by the isolation layer as ``python -m bench.runners.worker CASE.json OUT.json``.
Python exceptions become status ``error`` (or ``oom`` for out-of-memory errors) with
the traceback; anything that kills the process is classified by the parent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import resource
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.measurement import baton as baton_module
from bench.measurement.allocator import describe_current
from bench.measurement.baton import BatonTimer
from bench.measurement.clocks import ClockSampler
from bench.measurement.energy import EnergyMeter
from bench.measurement.flops import compute_record
from bench.measurement.instructions import count_steps
from bench.measurement.interference import InterferenceProbe
from bench.measurement.memory import MemoryTracker
from bench.measurement.sampler import measure
from bench.measurement.serving import serve_scenario
from bench.measurement.stats import percentiles, summarize
from bench.measurement.timers import timer_for
from bench.measurement.training_run import run_to_target, trials_of
from bench.results.schema import (
    INJECTED_SLOWDOWN_KEY,
    INSTRUCTION_STEPS_KEY,
    SLOWDOWN_ENV,
    STATUS_CONTENDED,
    STATUS_DIVERGED,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_OOM,
    AccuracyResult,
    CaseResult,
    ThroughputResult,
    TimeToAccuracyResult,
    TimingResult,
)
from bench.results.store import json_safe
from bench.runners.ranks import is_distributed, run_ranks
from bench.spec.model import CLOSED_LOOP, CaseSpec, ServingSpec
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import Outcome, RunContext

TRACEBACK_TAIL_CHARS = 4000


def _timing(measurement, step_description: str) -> TimingResult:
    return TimingResult(
        timer=measurement.timer, timer_description=measurement.timer_description,
        step_description=step_description, cold_start_s=measurement.cold_start_s,
        warmup_iterations=measurement.warmup_iterations,
        warmup_steady=measurement.warmup_steady, warmup_s=measurement.warmup_s,
        iters_per_trial=measurement.iters_per_trial, trial_samples_s=measurement.trials,
        trial_means_s=measurement.trial_means_s, latency_s=measurement.latency_percentiles_s,
        stop_reason=measurement.stop_reason, trial_timing=measurement.trial_timing,
        latency_trial_samples_s=measurement.latency_trials,
        **TimingResult.summary_fields(measurement.summary),
    )


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``Type: first line of the message`` (the whole traceback goes to stderr_tail): tools
    such as the ONNX exporter raise messages of many lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if len(lines) > 1:
        text += f" (+{len(lines) - 1} more lines in stderr_tail)"
    return text[:limit]


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError | torch.OutOfMemoryError)


def _configure_torch(case: CaseSpec) -> dict[str, Any]:
    threads = case.axes.get("threads", 0)
    if case.count_instructions:
        # As torch.utils.benchmark counts: one thread. OpenMP's idle threads spin-wait, and
        # callgrind would count their spinning, which varies from run to run.
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if case.device == "cuda":
        torch.cuda.manual_seed_all(0)
    return {"torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def _with_injected_slowdown(step: Any, details: dict[str, Any]) -> Any:
    """Test-only knob (gate-quality measurements, regression-gate tests): with
    BENCH_TEST_SLOWDOWN=0.1 every step takes 10% longer (it spins for 0.1 x its own
    duration). Recorded in the result, never silent. CPU steps only: a CUDA step returns
    before its kernels finish."""
    fraction = float(os.environ.get(SLOWDOWN_ENV, "0") or 0)
    if fraction <= 0:
        return step
    if not math.isfinite(fraction):
        raise ValueError(f"{SLOWDOWN_ENV}={fraction!r} is not a finite fraction")
    details[INJECTED_SLOWDOWN_KEY] = fraction

    def slowed() -> object:
        started = time.perf_counter()
        out = step()
        until = time.perf_counter() + (time.perf_counter() - started) * fraction
        while time.perf_counter() < until:
            pass
        return out

    return slowed


def divergence(metrics: dict[str, float], details: dict[str, Any]) -> str | None:
    """Why a case diverged (a task metric NaN or infinite), or None."""
    bad = {k: v for k, v in metrics.items()
           if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return None
    text = "non-finite " + ", ".join(f"{k}={v}" for k, v in bad.items())
    step = details.get("first_nonfinite_step")
    if step is not None:
        text += f"; the training loss was first non-finite at optimizer step {step}"
    return text


def _record_timing(result: CaseResult, measurement: Any, phase: Any, probe: Any,
                   faults: int) -> None:
    """The timed phase's figures, warnings and interference into ``result``."""
    steps = measurement.steps_run
    # Fresh pages the allocator had to fault in: a step that allocates from recycled
    # heap memory is faster than one that maps new pages (see measurement.allocator).
    result.details["minor_page_faults_per_step"] = faults / steps
    result.warnings.extend(measurement.warnings)
    _timed_figures(result, _timing(measurement, phase.step_description), phase, probe)


def _timed_figures(result: CaseResult, timing: TimingResult, phase: Any, probe: Any) -> None:
    """Timing, throughput, the injected-slowdown warning and the interference verdict of a
    timed phase (sampled, or a time-to-accuracy run) into ``result``."""
    result.timing = timing
    result.throughput = ThroughputResult.from_timing(timing, phase.samples_per_step,
                                                     f"{phase.sample_unit}/s")
    if INJECTED_SLOWDOWN_KEY in result.details:
        result.warnings.append(f"injected slowdown: every step spun "
                               f"{result.details[INJECTED_SLOWDOWN_KEY]:.0%} longer "
                               f"({SLOWDOWN_ENV}, a test knob)")
    _record_interference(result, probe)


def _record_interference(result: CaseResult, probe: InterferenceProbe) -> None:
    """The probe's figures; a case timed while other processes used the CPU is contended."""
    result.interference = probe.result
    if probe.result is not None and probe.result.contended:
        result.status, result.reason = STATUS_CONTENDED, probe.reason()


def _record_clocks(result: CaseResult, clocks: ClockSampler) -> None:
    result.clocks = clocks.result()
    warning = clocks.warning()
    if warning:
        result.warnings.append(warning)


def _measure_and_finish(case: CaseSpec, phase: Any, result: CaseResult) -> None:
    """Time the phase, then its task metrics, FLOP count and divergence into ``result``."""
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step = _with_injected_slowdown(phase.step, result.details)
    probe = InterferenceProbe(result.worker["torch_threads"], case.budget.contended_above)
    timer, clock = timer_for(case.device), time.perf_counter
    baton = baton_module.current()
    if baton is not None:  # a lockstep A/B round: time only in this worker's turns
        timer, clock = BatonTimer(timer, baton), baton.held_clock
        baton.listeners.append(probe.on_turn)
    with phase.session(), probe, ClockSampler(case.device) as clocks, \
            EnergyMeter(case.device) as energy:
        measurement = measure(step, timer, case.budget, clock)
    if baton is not None:
        baton.listeners.remove(probe.on_turn)
        result.details["baton"] = baton.figures()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    steps = measurement.steps_run
    result.energy = energy.result(steps * phase.samples_per_step)
    _record_clocks(result, clocks)
    _record_timing(result, measurement, phase, probe, faults)
    _finish_outcome(case, phase, result)


def _serve_and_finish(case: CaseSpec, phase: Any, result: CaseResult) -> None:
    """A LoadGen scenario (bench.measurement.serving), then the task metrics."""
    probe = InterferenceProbe(result.worker["torch_threads"], case.budget.contended_above)
    with phase.session(), probe:
        serving, clocks = serve_scenario(case.axes["scenario"], phase,
                                         case.serving or ServingSpec(),
                                         int(case.axes.get("batch_size", 1)), case.device)
    result.serving = serving
    result.energy = serving.headline_run.energy
    _record_clocks(result, clocks)
    _record_interference(result, probe)
    _finish_outcome(case, phase, result, flops=False)


def _finish_outcome(case: CaseSpec, phase: Any, result: CaseResult,
                    flops: bool = True) -> None:
    outcome = Outcome(metrics={}) if case.probe else phase.finish()
    result.accuracy = AccuracyResult.for_case(
        case, outcome.metrics,
        outcome.task_metric or get_workload(case.workload).task_metric(case.phase))
    result.details.update(outcome.details)
    result.model = outcome.model
    result.classes = outcome.classes
    # After timing: counting runs one more step, the measured peak a large matmul.
    count = None if case.probe or not flops else phase.flop_count()
    if count is not None:
        result.compute = compute_record(count, result.timing.median_s, case.device)
    diverged = divergence(outcome.metrics, outcome.details)
    if diverged:
        result.status, result.reason = STATUS_DIVERGED, diverged


def _run_timing(trace: Any, timer: Any, phase: Any) -> TimingResult:
    """The engine's per-step figures from the steps of the real training run."""
    cold, trials = trials_of(trace)
    means = [sum(t) / len(t) for t in trials]
    return TimingResult(
        timer=timer.name, timer_description=timer.description,
        step_description=phase.step_description, cold_start_s=cold, warmup_iterations=0,
        warmup_steady=True, warmup_s=0.0,
        iters_per_trial=trace.steps_per_eval, trial_samples_s=trials, trial_means_s=means,
        latency_s=percentiles([d for t in trials for d in t]), stop_reason="training_run",
        statistic="median over the intervals between evaluations of the interval's mean "
                  "seconds per optimizer step: every step of the time-to-accuracy run "
                  "itself (the first step is the cold start; no separate warm-up)",
        **TimingResult.summary_fields(summarize(means)))


def _progress_reporter(path: str | None) -> Any:
    """bench tune's view of a run: each evaluation appended to ``path`` as a JSON line;
    False (stop: pruned) once the file ``path.stop`` exists. None without a path."""
    if path is None:
        return None
    stop = Path(path + ".stop")

    def report(point: Any) -> bool:
        with open(path, "a") as out:
            out.write(json.dumps(json_safe(dataclasses.asdict(point))) + "\n")
        return not stop.exists()

    return report


def _train_to_target(case: CaseSpec, phase: Any, result: CaseResult) -> None:
    """Time-to-accuracy mode: one run of this seed to the target; its steps are the timed
    steps, its final evaluation the task metrics."""
    workload = get_workload(case.workload)
    metric, higher = workload.watched_metric(case)
    patience = int(case.axes.get("early_stopping", 0))
    step = _with_injected_slowdown(phase.step, result.details)
    probe = InterferenceProbe(result.worker["torch_threads"], case.budget.contended_above)
    timer = timer_for(case.device)
    with phase.session(), probe:
        trace = run_to_target(phase, timer, case.training, case.seed, metric, patience,
                              step=step, on_eval=_progress_reporter(case.progress_file))
    trace.run.pid = os.getpid()
    outcome = phase.run_outcome(trace.run.curve[-1].metrics)
    _timed_figures(result, _run_timing(trace, timer, phase), phase, probe)
    record_training_run(case, trace, outcome, result)


def record_training_run(case: CaseSpec, trace: Any, outcome: Outcome,
                        result: CaseResult) -> None:
    """A seed's run to its target (a TrainingTrace) and its final outcome into ``result``."""
    workload = get_workload(case.workload)
    metric, higher = workload.watched_metric(case)
    patience = int(case.axes.get("early_stopping", 0))
    result.accuracy = AccuracyResult.for_case(case, outcome.metrics,
                                              workload.task_metric(case.phase))
    result.details.update(outcome.details)
    result.classes = outcome.classes
    result.time_to_accuracy = TimeToAccuracyResult(
        settings=case.training.to_dict(), target=case.training.describe_target(),
        metric=metric, higher_is_better=higher, early_stopping_patience=patience,
        runs=[trace.run], converged=int(trace.run.converged), score_s=None,
        score_samples=None, score_steps=None, score_epochs=None,
        method="one seed (the sweep merges the seeds' runs)")
    diverged = divergence(outcome.metrics, {})
    if trace.run.stop_reason == "non_finite" or diverged:
        result.status = STATUS_DIVERGED
        result.reason = diverged or "non-finite training loss at step " \
                                    f"<= {trace.run.steps}"


def run_case(case: CaseSpec) -> CaseResult:
    started = time.perf_counter()
    result = CaseResult.for_case(case, STATUS_OK)
    result.worker = {"pid": os.getpid(), "python": sys.version.split()[0],
                     "bench_source": str(Path(__file__).resolve().parents[2])}
    tracker = None
    try:
        result.worker.update(_configure_torch(case))
        precision = get_precision(case.axes.get("precision", "fp32"))
        result.details["precision_method"] = precision.method()
        result.details["allocator"] = describe_current()
        if is_distributed(case):  # its ranks are processes of their own, each tracked
            run_ranks(case, result)
            return _finished(result, started)
        ctx = RunContext(device=case.device, precision=precision, seed=case.seed)
        with MemoryTracker(case.device) as tracker:
            phase = get_workload(case.workload).prepare(case, ctx)
            if case.count_instructions:  # under callgrind: count, time nothing
                with phase.session():
                    result.details[INSTRUCTION_STEPS_KEY] = count_steps(phase.step)
            elif case.training is not None:
                _train_to_target(case, phase, result)
            elif case.axes.get("scenario", CLOSED_LOOP) != CLOSED_LOOP:
                _serve_and_finish(case, phase, result)
            else:
                _measure_and_finish(case, phase, result)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a status
        result.status = STATUS_OOM if _is_oom(exc) else STATUS_ERROR
        result.reason = one_line(exc)
        result.stderr_tail = traceback.format_exc()[-TRACEBACK_TAIL_CHARS:]
    if tracker is not None and tracker.report is not None:
        result.memory = tracker.report
    return _finished(result, started)


def _finished(result: CaseResult, started: float) -> CaseResult:
    result.duration_s = time.perf_counter() - started
    result.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return result


def _exit_with_parent() -> None:
    """If the sweep that started us dies (even by SIGKILL), stop rather than run orphaned."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    _exit_with_parent()
    baton_module.take_from_env()  # in a lockstep A/B round: wait for this worker's turn
    case_path, out_path = Path(argv[0]), Path(argv[1])
    case = CaseSpec.from_dict(json.loads(case_path.read_text()))
    result = run_case(case)
    out_path.write_text(json.dumps(json_safe(dataclasses.asdict(result))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
