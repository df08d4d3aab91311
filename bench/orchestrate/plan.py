"""What this machine can run of a suite: its expanded cases, each with the reason it
cannot run here (no GPU, a precision the device lacks, a kernel the workload does not
build), asked of the devices, precisions and workloads. The spec layer only parses."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from bench.extras import missing_reason
from bench.results.schema import STATUS_SKIPPED, CaseResult
from bench.spec.expand import expand_suite
from bench.spec.model import CLOSED_LOOP, CaseSpec, SuiteSpec
from bench.variants import parallel
from bench.variants.devices import device_unavailable_reason
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import Workload


@dataclass(frozen=True)
class PlannedCase:
    spec: CaseSpec
    skip_reason: str | None = None

    @property
    def case_id(self) -> str:
        return self.spec.case_id


def skip_reason(case: CaseSpec) -> str | None:
    """Why this case cannot run on this machine, or None if it can."""
    reason = device_unavailable_reason(case.device)
    if reason:
        return reason
    precision = get_precision(case.precision)
    workload = get_workload(case.workload)
    reason = missing_reason(case_extras(case, workload))
    if reason:
        return reason
    if precision.float8_training and not workload.float8_training:
        return f"workload {case.workload} does not build float8 training (gpt does)"
    reason = precision.unsupported_reason(case.device, case.phase)
    if reason:
        return reason
    if case.axes.get("parallel") in parallel.MODEL_PARALLEL_MODES and \
            case.parallel not in workload.model_parallel:
        return f"parallel={case.parallel} splits the model itself: workload " \
               f"{case.workload} names no split for it (gpt does)"
    reason = _parallel_reason(case) or _mode_reason(case)
    if reason:
        return reason
    return workload.unsupported_reason(case)


def case_extras(case: CaseSpec, workload: type[Workload]) -> tuple[str, ...]:
    """The optional features (bench.extras) ``case`` needs installed."""
    extras = list(workload.case_extras(case))
    if case.scenario != CLOSED_LOOP:
        extras.append("serving")
    backend, quantization = case.axes.get("backend"), case.axes.get("quantization", "none")
    if backend == "compile" and quantization != "none":
        extras.append("quant")  # torchao's PT2E int8 for inductor
    if backend == "onnxruntime" and quantization != "none":
        extras.append("onnx")  # the int8 initializers are counted with onnx
    return tuple(extras)


def _mode_reason(case: CaseSpec) -> str | None:
    if case.mode is None:
        return None
    from bench.modes import get_mode  # the modes import torch: only for a suite naming one

    return get_mode(case.mode).refuses(case)


def _parallel_reason(case: CaseSpec) -> str | None:
    if "parallel" not in case.axes:
        return None
    mode, world = case.parallel, case.world_size
    reason = parallel.unsupported_reason(mode, world, case.backend, case.precision)
    reason = reason or parallel.mesh_reason(mode, world, case.axes.get("tp_size",
                                                                      parallel.DEFAULT_TP_SIZE))
    reason = reason or parallel.device_reason(mode, case.device)
    if reason or mode == "none" or case.device != "cuda":
        return reason
    import torch  # kept out of start-up (the CUDA device count)

    if torch.cuda.device_count() < world:
        return f"world_size {world} needs {world} GPUs, this machine has " \
               f"{torch.cuda.device_count()}"
    return None


def plan_suite(suite: SuiteSpec, select: dict[str, set[str]] | None = None) -> list[PlannedCase]:
    """Every case of ``suite`` (after ``select``), in file order; cases that cannot run
    here are kept, with their reason, never dropped."""
    return [PlannedCase(case, skip_reason(case)) for case in expand_suite(suite, select)]


def skipped_result(planned: PlannedCase) -> CaseResult:
    """The record of a case this machine cannot run, with the reason."""
    return CaseResult.for_case(planned.spec, STATUS_SKIPPED, planned.skip_reason,
                               finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
