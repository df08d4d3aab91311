"""The host memory allocator state a worker measures in.

glibc's malloc serves large blocks (>= 128 KiB at start) with mmap and returns them with
munmap, and raises that threshold *dynamically* each time such a block is freed. So the
same forward pass either reuses heap pages or maps and faults in fresh ones (tens of MB
per step, 5-10% slower on a transformer) depending on what the process happened to
allocate and free before it: a plain loop in a fresh process and the suite's worker
disagreed by 7% for that reason alone (results/runs/crosscheck-minilm-cpu-epyc-2core.txt).

``steady`` pins the state instead: blocks up to 32 MiB (the ceiling glibc allows) come
from the heap, and freed heap memory is kept rather than trimmed, which is the reuse
PyTorch's CPU tuning guide gets from jemalloc/tcmalloc. ``system`` leaves the process
history dependence in, for users who want the default. The workers get it through
glibc's environment tunables, read when the interpreter starts; other C libraries
ignore them, and the record says so.
"""

from __future__ import annotations

import os
import platform

from bench.spec.model import ALLOCATOR_POLICIES
from bench.units import MIB

STEADY_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * MIB),
    "MALLOC_TRIM_THRESHOLD_": str(4096 * MIB),
}


def worker_env(policy: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a worker process measuring under ``policy``."""
    env = dict(os.environ if base is None else base)
    for key in STEADY_ENV:
        env.pop(key, None)
    if policy == "steady":
        env.update(STEADY_ENV)
    elif policy != "system":
        raise ValueError(f"unknown allocator policy {policy!r}; "
                         f"valid: {', '.join(ALLOCATOR_POLICIES)}")
    return env


POLICY_MEANINGS = {
    "steady": "glibc malloc pinned for the workers (MALLOC_MMAP_THRESHOLD_=32 MiB, "
              "MALLOC_TRIM_THRESHOLD_=4 GiB: freed heap pages are reused, as jemalloc or "
              "tcmalloc would); a process with default malloc settings can run slower "
              "(MiniLM fp32 eager, batch 8, seq 128 on a CPU: 12% slower), so compare your "
              "own service under the same settings, or measure the default with [budget] "
              "allocator = \"system\"",
    "system": "default malloc settings (glibc's dynamic mmap threshold), as in a plain "
              "process",
}


def policy_line(policies: set[str]) -> str:
    """What the allocator policies a run's workers measured under mean, in one line."""
    if not policies:
        return "allocator: not recorded"
    return "; ".join(f"allocator = \"{p}\": {POLICY_MEANINGS.get(p, 'unknown policy')}"
                     for p in sorted(policies))


def describe_current() -> str:
    """What this process runs under, as read from its own environment and C library."""
    libc, version = platform.libc_ver()
    name = f"{libc} {version}".strip() or "unknown C library"
    settings = {key: os.environ[key] for key in STEADY_ENV if key in os.environ}
    if not settings:
        return f"{name} malloc, default settings (dynamic mmap threshold)"
    applies = "" if libc == "glibc" else " (glibc tunables; this C library ignores them)"
    text = ", ".join(f"{key}={int(value) // MIB} MiB" for key, value in settings.items())
    return f"{name} malloc, {text}{applies}"
