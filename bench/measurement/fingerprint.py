"""The environment fingerprint recorded with every run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.units import MIB

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "CUDA_VISIBLE_DEVICES", "TORCHINDUCTOR_CACHE_DIR")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_numbers() -> dict[str, int | None]:
    """The CPU's family and model numbers: where the model string is generic ("AMD EPYC")
    they tell the generations (and ISA levels) apart."""
    found: dict[str, int | None] = {"family": None, "model_number": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "cpu family" and found["family"] is None:
                found["family"] = int(value)
            elif key == "model" and found["model_number"] is None:
                found["model_number"] = int(value)
            if None not in found.values():
                break
    except (OSError, ValueError):
        pass
    return found


def cpu_flags() -> list[str]:
    wanted = {"avx", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma", "sse4_2"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(wanted & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_state(path: str | Path) -> dict[str, Any]:
    """Commit and dirty flag of the repository holding ``path`` (None outside git)."""
    directory = Path(path).resolve()
    directory = directory if directory.is_dir() else directory.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                                 text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def gpu_fingerprint() -> list[dict[str, Any]]:
    """GPU name, driver, memory, power limit and clocks through NVML; [] without one."""
    try:
        import pynvml  # optional (nvidia-ml-py): GPU hosts only

        pynvml.nvmlInit()
    except Exception:
        return []
    gpus = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            info: dict[str, Any] = {"index": index, "name": pynvml.nvmlDeviceGetName(handle),
                                    "driver": driver}

            def read(key: str, fn, *args, scale: float = 1.0, _info=info, _h=handle) -> None:
                try:
                    _info[key] = fn(_h, *args) * scale
                except Exception:
                    _info[key] = None

            read("memory_total_mib", lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).total,
                 scale=1 / MIB)
            read("power_limit_w", pynvml.nvmlDeviceGetPowerManagementLimit, scale=1e-3)
            read("sm_clock_mhz", pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_SM)
            read("sm_clock_max_mhz", pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_SM)
            read("mem_clock_max_mhz", pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_MEM)
            read("temperature_c", pynvml.nvmlDeviceGetTemperature,
                 pynvml.NVML_TEMPERATURE_GPU)
            gpus.append(info)
    finally:
        pynvml.nvmlShutdown()
    return gpus


def fingerprint(suite_path: str | Path | None = None) -> dict[str, Any]:
    # torch and numpy when a fingerprint is taken: reports import this module without them.
    import numpy
    import torch

    cuda: dict[str, Any] | None = None
    if torch.cuda.is_available():
        cuda = {
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "capability": list(torch.cuda.get_device_capability()),
        }
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "cpu": {
            "model": cpu_model(),
            "arch": platform.machine(),
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "flags": cpu_flags(),
            **cpu_numbers(),
        },
        "memory_total_mib": psutil.virtual_memory().total / MIB,
        "packages": {
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "onnxruntime": _version("onnxruntime"),
            "scikit-learn": _version("scikit-learn"),
            "bench": _version("bench"),
        },
        "threads": {
            "torch_intraop": torch.get_num_threads(),
            "torch_interop": torch.get_num_interop_threads(),
            "env": {k: os.environ.get(k) for k in THREAD_ENV_VARS if k in os.environ},
        },
        "torch_config": {
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "cuda": cuda,
        "gpus": gpu_fingerprint(),
        "git": git_state(suite_path) if suite_path else git_state(Path(__file__)),
    }


# Words of a CPU model string that name its family (which baselines are kept per).
CPU_FAMILIES = ("epyc", "xeon", "ryzen", "threadripper", "core", "neoverse", "graviton", "apple")


def cpu_family(model: str) -> str:
    """``"AMD EPYC 7B13"`` -> ``"epyc"``, ``"Intel(R) Xeon(R) Platinum"`` -> ``"xeon"``: the
    family word of a CPU model string, else its first word (lower case), else ``"cpu"``."""
    text = model.lower().replace("(r)", " ").replace("(tm)", " ").replace("-", " ")
    words = [w for w in ("".join(c for c in w if c.isalnum()) for w in text.split()) if w]
    return next((w for w in words if w in CPU_FAMILIES), words[0] if words else "cpu")


def machine_name(fp: dict[str, Any]) -> str:
    """A short human name for the machine a fingerprint describes."""
    gpus = fp.get("gpus") or []
    if gpus:
        return f"{gpus[0]['name']} x{len(gpus)}"
    cpu = fp.get("cpu", {}) if isinstance(fp.get("cpu"), dict) else {}
    config = fp.get("torch_config") if isinstance(fp.get("torch_config"), dict) else {}
    isa = config.get("cpu_capability")
    return f"{cpu.get('model', 'cpu')} ({cpu.get('logical_cores')} threads" \
           f"{f', {isa}' if isa else ''})"
