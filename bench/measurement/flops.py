"""FLOPs and model FLOPs utilisation (MFU).

FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions and attention; elementwise ops are not counted) and stated next to the
workload's analytic formula. MFU = achieved FLOP/s / peak FLOP/s against two peaks:

- measured: the best of a few square ``F.linear`` matmuls in the case's dtype on this
  device, timed with torch.utils.benchmark once per machine and cached;
- spec: the vendor's dense (no 2:4 sparsity) peak for the exact device name, when known;
  on a CPU without one, the theoretical threads x clock x FLOP/cycle of its FMA units.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as tub
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from bench.errors import BenchInputError
from bench.files import write_text_atomically
from bench.measurement.fingerprint import cpu_flags, cpu_model
from bench.results.schema import ComputeResult

# Dense peaks in TFLOP/s from the vendors' data sheets (tensor-core figures without
# sparsity), keyed by torch.cuda.get_device_name() and compute dtype.
SPEC_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
                              "fp8": 1978.9},
    "NVIDIA H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0,
                         "fp8": 1513.0},
    "NVIDIA H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
                    "fp8": 1978.9},
    "NVIDIA A100-SXM4-80GB": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "NVIDIA A100-SXM4-40GB": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}
CALIBRATION_VERSION = "linear-best-of-sizes-v2"  # change when _time_matmul changes
SPEC_SOURCE = "vendor data sheet, dense tensor-core peak (H100 SXM5 / H200 / A100 SXM4)"


@dataclass(frozen=True)
class FlopCount:
    """What a phase reports about its arithmetic."""

    counted_per_step: float
    analytic_per_step: float
    analytic_formula: str
    compute_dtype: str  # fp32 / tf32 / bf16 / fp16: which peak MFU divides by
    counted_method: str = "torch.utils.flop_counter.FlopCounterMode over one step " \
                          "(matmul, conv, attention; elementwise not counted)"


def _register_cpu_attention() -> None:
    """FlopCounterMode knows the CUDA attention kernels but not the CPU flash-attention op
    that scaled_dot_product_attention dispatches to on CPU (torch 2.13), so attention
    would count as free there. Register it with torch's own SDPA formulas."""
    aten = torch.ops.aten
    pairs = (("_scaled_dot_product_flash_attention_for_cpu", flop_counter.sdpa_flop_count, 3),
             ("_scaled_dot_product_flash_attention_for_cpu_backward",
              flop_counter.sdpa_backward_flop_count, 4))
    for name, formula, shapes in pairs:
        op = getattr(aten, name, None)
        if op is None or op in flop_counter.flop_registry:
            continue

        def flops(*args, out_shape=None, _formula=formula, _n=shapes, **kwargs) -> int:
            return _formula(*args[:_n])

        flop_counter.register_flop_formula(op)(flops)


def count_flops(fn: Callable[[], object]) -> float:
    _register_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def compute_dtype(precision: str) -> str:
    return {"bf16": "bf16", "fp16": "fp16", "tf32": "tf32", "bf16_cast": "bf16",
            "fp16_cast": "fp16", "fp8": "fp8"}.get(precision, "fp32")


def spec_peak(device_name: str, dtype: str) -> float | None:
    return SPEC_PEAKS_TFLOPS.get(device_name, {}).get(dtype)


def cpu_theoretical_peak(dtype: str, threads: int, flags: set[str] | None = None,
                         mhz: float | None = None) -> tuple[float, str] | None:
    """threads x clock x FLOP per cycle per core from the ISA, for fp32 FMA units: AVX2+FMA
    is 2 units x 8 lanes x 2 = 32, AVX-512 64 (assuming two 512-bit FMA units). Without
    avx512_bf16/AMX, bf16 and fp16 run at best at that fp32 rate (convert, then fp32 FMA)."""
    flags = set(cpu_flags()) if flags is None else flags
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else None
    if per_cycle is None or dtype not in ("fp32", "bf16", "fp16"):
        return None
    if dtype != "fp32" and flags & {"avx512_bf16", "amx_bf16"}:
        return None  # native low-precision units: no simple formula on file
    if mhz is None:
        try:
            mhz = next(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text()
                       .splitlines() if line.startswith("cpu MHz"))
        except (OSError, StopIteration, ValueError):
            return None
    tflops = threads * mhz * 1e6 * per_cycle / 1e12
    return tflops, f"theoretical: {threads} threads x {mhz:.0f} MHz (/proc/cpuinfo) x " \
                   f"{per_cycle} fp32 FLOP/cycle ({'AVX-512' if per_cycle == 64 else 'AVX2+FMA'}" \
                   " FMA units); no vendor figure for this CPU"


def _cache_path() -> Path:
    root = os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "bench"
    return Path(root) / "peak_tflops.json"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_model()


def measured_peak(device: str, dtype: str) -> tuple[float, str]:
    """Achieved TFLOP/s of a square matmul in ``dtype`` on ``device``, cached per machine
    (device name, torch version, thread count) in ~/.cache/bench (BENCH_CACHE_DIR)."""
    threads = torch.get_num_threads()
    key_text = f"{device_name(device)}|{device}|{dtype}|torch {torch.__version__}|{threads}" \
               f"|{CALIBRATION_VERSION}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    path = _cache_path()
    cache: dict[str, Any] = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    if key in cache:
        entry = cache[key]
        return entry["tflops"], entry["method"] + " (cached)"
    tflops, method = _time_matmul(device, dtype)
    cache[key] = {"tflops": tflops, "method": method, "what": key_text}

    # A unique temporary name: two workers may time the peak at once. An unwritable
    # cache only costs the next case another timing.
    with contextlib.suppress(BenchInputError):
        write_text_atomically(path, json.dumps(cache, indent=1))
    return tflops, method


def _time_matmul(device: str, dtype: str) -> tuple[float, str]:
    """Best TFLOP/s of ``F.linear(a, w)`` (a @ wᵀ, the layout nn.Linear runs: on CPUs
    without native bf16 it takes oneDNN's path, 20x faster than a plain bf16 ``a @ b``)
    over a few square sizes."""
    if dtype == "fp8":
        return _time_scaled_mm(device)
    sizes = (4096, 8192) if device == "cuda" else (256, 512, 1024)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    best = 0.0
    try:
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=torch_dtype)
            w = torch.randn(n, n, device=device, dtype=torch_dtype)
            timer = tub.Timer("F.linear(a, w)", globals={"a": a, "w": w,
                                                         "F": torch.nn.functional},
                              num_threads=torch.get_num_threads())
            median = timer.blocked_autorange(min_run_time=0.5).median
            best = max(best, 2 * n**3 / median / 1e12)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    sizes_text = "/".join(map(str, sizes))
    return best, f"best of F.linear(a, w) (a @ wᵀ), n x n, n = {sizes_text}, {dtype}: " \
                 "2·n³ / median of torch.utils.benchmark.Timer.blocked_autorange(0.5 s)"


def _time_scaled_mm(device: str) -> tuple[float, str]:
    """fp8 peak: torch._scaled_mm (e4m3 x e4m3 -> bf16, tensorwise scales), the kernel
    Float8Linear runs; the second operand column-major as cuBLASLt requires."""
    if device != "cuda":
        raise RuntimeError("float8 matmul peak is measured on CUDA only")
    best = 0.0
    for n in (4096, 8192):
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=device)
        timer = tub.Timer("torch._scaled_mm(a, b, scale_a=one, scale_b=one, "
                          "out_dtype=torch.bfloat16)",
                          globals={"a": a, "b": b, "one": one, "torch": torch})
        median = timer.blocked_autorange(min_run_time=0.5).median
        best = max(best, 2 * n**3 / median / 1e12)
    return best, "best of torch._scaled_mm(e4m3 n x n, e4m3 column-major, out bf16), " \
                 "n = 4096/8192: 2·n³ / median of torch.utils.benchmark (0.5 s)"


def compute_record(count: FlopCount, median_step_s: float, device: str) -> ComputeResult:
    """The result file's ``compute`` record: FLOPs, achieved TFLOP/s and MFU with both peaks."""
    achieved = count.counted_per_step / median_step_s / 1e12
    name = device_name(device)
    measured, measured_method = measured_peak(device, count.compute_dtype)
    spec = spec_peak(name, count.compute_dtype)
    spec_source = SPEC_SOURCE if spec is not None else \
        f"no dense spec peak on file for {name!r} ({count.compute_dtype})"
    if spec is None and device == "cpu":
        derived = cpu_theoretical_peak(count.compute_dtype, torch.get_num_threads())
        if derived is not None:
            spec, spec_source = derived
    return ComputeResult(
        flops_per_step=count.counted_per_step,
        flops_method=count.counted_method,
        analytic_flops_per_step=count.analytic_per_step,
        analytic_formula=count.analytic_formula,
        counted_over_analytic=count.counted_per_step / count.analytic_per_step,
        achieved_tflops=achieved,
        achieved_method="counted FLOPs per step / median step time",
        compute_dtype=count.compute_dtype,
        device_name=name,
        peak_measured_tflops=measured,
        peak_measured_method=measured_method,
        mfu_measured=achieved / measured,
        peak_spec_tflops=spec,
        peak_spec_source=spec_source,
        mfu_spec=achieved / spec if spec else None,
    )
