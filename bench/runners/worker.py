"""The worker: runs one case in a fresh interpreter and writes its result as JSON.

Invoked by the isolation layer as ``python -m bench.runners.worker CASE.json OUT.json``.
Python exceptions become status ``error`` (or ``oom`` for out-of-memory errors) with
the traceback; anything that kills the process is classified by the parent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.measurement import baton as baton_module
from bench.measurement.allocator import describe_current
from bench.modes import mode_for
from bench.results.schema import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_OOM,
    CaseResult,
)
from bench.results.store import json_safe
from bench.spec.model import CaseSpec
from bench.variants.precision import get_precision

TRACEBACK_TAIL_CHARS = 4000


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


def run_case(case: CaseSpec) -> CaseResult:
    """The case run by its mode (bench.modes); every exception becomes a status."""
    started = time.perf_counter()
    result = CaseResult.for_case(case, STATUS_OK)
    result.worker = {"pid": os.getpid(), "python": sys.version.split()[0],
                     "bench_source": str(Path(__file__).resolve().parents[2])}
    try:
        result.worker.update(_configure_torch(case))
        precision = get_precision(case.precision)
        result.details["precision_method"] = precision.method()
        result.details["allocator"] = describe_current()
        mode = mode_for(case)
        result.worker["mode"] = mode.name
        mode().run(case, result)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a status
        result.status = STATUS_OOM if _is_oom(exc) else STATUS_ERROR
        result.reason = one_line(exc)
        result.stderr_tail = traceback.format_exc()[-TRACEBACK_TAIL_CHARS:]
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
