"""Instruction counts: a deterministic second signal for CPU steps, beside wall time.

A CPU step's wall time on a shared machine moves by percents with neighbours, frequency and
placement; the number of instructions it executes does not (CodSpeed gates CI on simulated
counts for this reason). The worker runs under valgrind's callgrind with collection off,
switches it on for ``steps`` steps after a warm-up and off again (``torch._C._valgrind_toggle``,
the client request torch.utils.benchmark's ``collect_callgrind`` uses), and the parent reads
the total instructions (Ir) from callgrind's output: instructions per step, counted the same
way in every run.

The worker counts at one torch thread, as torch.utils.benchmark does: OpenMP's idle
threads spin-wait, and callgrind would count their spinning (two threads gave counts 2%
apart for identical code). What it misses, and why it is reported beside wall time and
never instead of it: memory and cache behaviour (a step that executes the same
instructions with more cache misses is slower), threading and parallel speed-up,
kernel-dispatch effects outside the process, and anything whose cost is time rather than
instructions (sleeps; the BENCH_TEST_SLOWDOWN spin is not applied to counted steps).

Callgrind's instrumentation runs code about 50x slower, and a worker's imports, data and
model are most of its instructions. Where valgrind's ``callgrind_control`` is installed (it
ships with valgrind), the worker starts uninstrumented (``--instr-atstart=no``, about 5x
slower than native) and switches instrumentation on for itself right before its warm-up
steps: the same counts (781,559 and 782,955 instructions for one step measured both ways),
the import of torch under valgrind 17 s instead of 74 s here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

# Steps counted per run (after WARMUP_STEPS uncounted ones): enough that the step's own
# work dominates the per-run fixed cost of toggling collection.
COUNTED_STEPS = 10
WARMUP_STEPS = 3
# callgrind runs the whole worker (imports, data, model) about 50x slower than native.
VALGRIND_TIMEOUT_S = 900.0
# Set in the worker's environment when it starts uninstrumented: it must switch
# instrumentation on for itself before it counts.
DEFERRED_ENV = "BENCH_CALLGRIND_DEFERRED"
METHOD = (f"valgrind --tool=callgrind, one torch thread, collection switched on for "
          f"{COUNTED_STEPS} steps after {WARMUP_STEPS} warm-up steps "
          "(torch._C._valgrind_toggle); total Ir / steps; memory and cache effects not seen")


def valgrind() -> str | None:
    """The valgrind executable, or None when it is not installed."""
    return shutil.which("valgrind")


def unavailable_reason() -> str | None:
    """Why instruction counts cannot be taken here, or None."""
    if valgrind() is None:
        return "valgrind is not installed (Debian/Ubuntu: apt install valgrind)"
    return None


def _control() -> str | None:
    return shutil.which("callgrind_control")


def command_prefix(out_file: Path) -> list[str]:
    """The words put before ``python -P -m bench.runners.worker ...``."""
    deferred = ["--instr-atstart=no"] if _control() else []
    return [valgrind() or "valgrind", "--tool=callgrind", *deferred, "--collect-atstart=no",
            f"--callgrind-out-file={out_file}", "--dump-line=no", "--dump-instr=no",
            "--cache-sim=no", "--branch-sim=no", "--quiet"]


def worker_env(prefix: list[str]) -> dict[str, str]:
    """What the counting worker must know of how it was started (``prefix``)."""
    return {DEFERRED_ENV: "1"} if "--instr-atstart=no" in prefix else {}


def start_instrumentation() -> None:
    """In a worker started uninstrumented: switch callgrind's instrumentation on for this
    process (``callgrind_control --instr=on``, which returns once valgrind has done it).
    Raises when it cannot: a count of uninstrumented steps would read zero."""
    if not os.environ.get(DEFERRED_ENV):
        return
    control = _control()
    done = subprocess.run([control, "--instr=on", str(os.getpid())], capture_output=True,
                          text=True, timeout=120) if control else None
    if done is None or done.returncode != 0 or "OK" not in done.stdout:
        raise RuntimeError("callgrind_control could not switch instrumentation on: " + (
            "not installed" if done is None else (done.stdout + done.stderr).strip()[-300:]))


_TOTAL = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def read_total(out_file: Path) -> int | None:
    """Instructions (Ir) callgrind counted while collection was on; None without output."""
    try:
        text = out_file.read_text(errors="replace")
    except OSError:
        return None
    match = _TOTAL.search(text)
    return int(match.group(1)) if match else None


def count_steps(step: Callable[[], object], steps: int = COUNTED_STEPS,
                warmup: int = WARMUP_STEPS) -> int:
    """In the worker: run ``warmup`` steps, then ``steps`` steps with callgrind's collection
    on. Returns the steps counted."""
    import torch  # the worker has it loaded; kept out of the parent's reports

    start_instrumentation()
    for _ in range(warmup):
        step()
    torch._C._valgrind_toggle()
    try:
        for _ in range(steps):
            step()
    finally:
        torch._C._valgrind_toggle()
    return steps
