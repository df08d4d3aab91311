"""The host probe: fixed kernels timed beside a run, so a report can tell a slower host
from slower code.

Two machines of one CPU model are not one speed: on the same kind of 2-core VM the smoke
suite ran 0.39-0.59x the speed of its stored baseline with no steal recorded (a shared core,
memory bandwidth: nothing /proc/stat shows). ``bench run --host-probe`` times these kernels
before the first case and after the last, and compare/gate show the current run's probe
against the baseline's beside the speed ratios. The probe is reported, never gated: it
cannot tell which of the suite's cases the host's change hit.

The kernels (one thread, the same work on every machine; ``PROBE_VERSION`` changes with
them):
- ``matmul``: fp32 ``F.linear`` of two 256 x 256 matrices, 2·n³ FLOPs per call, as GFLOP/s
  from the median of ``torch.utils.benchmark.Timer.blocked_autorange`` (0.3 s);
- ``python``: a pure-Python loop (``sum(range(100_000))``), the interpreter's speed, as
  million iterations/s from the median of 7 ``timeit`` repeats of 0.05 s or more.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import timeit

from bench.results.schema import HostProbe

PROBE_VERSION = 1
MATMUL_N = 256
LOOP_N = 100_000
METHOD = (f"one thread; matmul: fp32 F.linear(a, w), {MATMUL_N} x {MATMUL_N}, 2·n³ FLOPs / median "
          "of torch.utils.benchmark.Timer.blocked_autorange(0.3 s), GFLOP/s; python: "
          f"sum(range({LOOP_N:_})), median of 7 timeit repeats (>= 0.05 s each), million "
          f"iterations/s; probe version {PROBE_VERSION}")


def _matmul_gflops() -> float:
    import torch  # torch only when a run asks for the probe: reports never import it
    import torch.utils.benchmark as tub

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=generator)
    w = torch.randn(MATMUL_N, MATMUL_N, generator=generator)
    timer = tub.Timer("F.linear(a, w)", globals={"a": a, "w": w, "F": torch.nn.functional},
                      num_threads=1)
    return 2 * MATMUL_N**3 / timer.blocked_autorange(min_run_time=0.3).median / 1e9


def _python_loop_mips() -> float:
    timer = timeit.Timer(f"sum(range({LOOP_N}))")
    number, total = timer.autorange()  # total >= 0.2 s: scaled to 0.05 s a repeat
    number = max(1, math.ceil(number * 0.05 / total))
    per_call = statistics.median(t / number for t in timer.repeat(repeat=7, number=number))
    return LOOP_N / per_call / 1e6


def probe_host(when: str) -> HostProbe:
    """Time the probe's kernels now; ``when`` says where in the run (start | end)."""
    import torch  # torch only when a run asks for the probe: reports never import it

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kernels = {"matmul_gflops": _matmul_gflops(), "python_mips": _python_loop_mips()}
    finally:
        torch.set_num_threads(threads)
    return HostProbe(when=when, at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     kernels=kernels, method=METHOD, version=PROBE_VERSION)


def host_ratio(baseline: list[HostProbe], current: list[HostProbe]) -> dict[str, float] | None:
    """Per kernel, the current run's median probe over the baseline's (higher: a faster
    host now), and ``host`` their geometric mean; None when either side has no probe of
    this version or a figure is not a finite positive number."""
    def medians(probes: list[HostProbe]) -> dict[str, float] | None:
        probes = [p for p in probes if p.version == PROBE_VERSION]
        if not probes:
            return None
        out = {}
        for key in probes[0].kernels:
            values = [p.kernels.get(key) for p in probes]
            if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0
                       for v in values):
                return None
            out[key] = statistics.median(values)
        return out

    base, cur = medians(baseline), medians(current)
    if base is None or cur is None or not base.keys() & cur.keys():
        return None
    ratios = {key: cur[key] / base[key] for key in sorted(base.keys() & cur.keys())}
    ratios["host"] = math.exp(statistics.fmean(math.log(r) for r in ratios.values()))
    return ratios


KERNEL_UNITS = {"matmul_gflops": ("matmul", "GFLOP/s"), "python_mips": ("Python loop", "M/s")}


def _kernels_text(kernels: dict[str, float]) -> str:
    parts = []
    for key, value in kernels.items():
        name, unit = KERNEL_UNITS.get(key, (key, ""))
        parts.append(f"{name} {value:.3g} {unit}".rstrip())
    return ", ".join(parts)


def describe(probes: list[HostProbe]) -> str:
    """The run's probes in one line ("" without any)."""
    if not probes:
        return ""
    return "host probe (one thread): " + "; ".join(
        f"{p.when} {_kernels_text(p.kernels)}" for p in probes)


def describe_ratio(baseline: list[HostProbe], current: list[HostProbe]) -> str:
    """The host's change between two runs, in one line, for compare and gate."""
    ratios = host_ratio(baseline, current)
    if ratios is None:
        missing = [side for side, probes in (("baseline", baseline), ("current", current))
                   if not any(p.version == PROBE_VERSION for p in probes)]
        if len(missing) == 2:
            return ""
        why = (f"the {' and '.join(missing)} run has no host probe (bench run --host-probe)"
               if missing else "a host probe figure is not a finite positive number")
        return f"Host probe: not compared: {why}."
    kernels = ", ".join(f"{KERNEL_UNITS.get(k, (k,))[0]} x{r:.3f}"
                        for k, r in ratios.items() if k != "host")
    return (f"Host probe (fixed one-thread kernels, current / baseline; reported, not "
            f"gated): host x{ratios['host']:.3f} (geometric mean of {kernels}). The speed "
            "ratios include the host's change; speed ÷ host estimates the code's.")
