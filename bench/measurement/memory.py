"""Peak memory: host RSS sampled in a background thread, CUDA allocator peaks, NVML."""

from __future__ import annotations

import contextlib
import resource
import time

import psutil

from bench.measurement.periodic import PeriodicSampler
from bench.results.schema import MemoryResult
from bench.units import MIB


def anon_rss_bytes() -> int | None:
    """This process's anonymous resident memory (RssAnon, Linux): what it allocated, without
    the file-backed pages of mapped libraries, whose residency depends on the page cache
    (the same worker showed 222 MiB RSS in one venv and 281 MiB in a freshly written one,
    with identical RssAnon)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def tree_rss_bytes(process: psutil.Process, children: list[psutil.Process] | None = None) -> int:
    """Resident set size of a process and its descendants (found now unless given)."""
    if children is None:
        children = process.children(recursive=True)
    total = 0
    for proc in [process, *children]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


class MemoryTracker(PeriodicSampler):
    """Context manager: samples RSS of this process and its children every ``interval`` s.

    On CUDA it also resets and reads torch's allocator peaks, and samples the device's
    used memory through NVML (which counts every process on the GPU).
    """

    # Finding children scans all of /proc while holding the GIL (milliseconds on a busy
    # host): done every sample it slowed the measured step by 1.5-2.4x on an H100 host.
    # So the process's own RSS (one small /proc read) is sampled often, the list of
    # children refreshed rarely, and the kernel's exact high-water mark reported too.
    # Even so, each wake-up preempts a compute thread and takes the GIL from the timed
    # code: at 10 ms it cost ~1.5% of a 12 ms two-thread CPU step on a 2-core machine, and
    # at 20 ms 1.5-2.6% of SmolLM2's Python-heavy decode step (paired calls, tracked or
    # not; 0.4% at 200 ms). Hence 100 ms: with the steady allocator freed heap stays
    # resident, so RssAnon only grows and a sample at the end reads its peak; what a
    # sample can miss is a large mmap'd block freed between samples.
    CHILDREN_REFRESH_S = 1.0
    INTERVAL_S = 0.1

    def __init__(self, device: str = "cpu", interval: float = INTERVAL_S) -> None:
        super().__init__(interval, "memory-tracker")
        self.device = device
        self._process = psutil.Process()
        self._peak_rss = 0
        self._peak_anon: int | None = None
        self._baseline_rss = 0
        self._samples = 0
        self._children: list[psutil.Process] = []
        self._children_at = float("-inf")
        self._nvml_handle = None
        self._nvml_peak: int | None = None
        self.report: MemoryResult | None = None

    def _sample(self) -> None:
        now = time.monotonic()
        if now - self._children_at >= self.CHILDREN_REFRESH_S:
            self._children = self._process.children(recursive=True)
            self._children_at = now
        self._peak_rss = max(self._peak_rss, tree_rss_bytes(self._process, self._children))
        anon = anon_rss_bytes()
        if anon is not None:
            self._peak_anon = max(self._peak_anon or 0, anon)
        if self._nvml_handle is not None:
            import pynvml  # optional (nvidia-ml-py): opened on CUDA only

            used = pynvml.nvmlDeviceGetMemoryInfo(self._nvml_handle).used
            self._nvml_peak = max(self._nvml_peak or 0, used)
        self._samples += 1

    def _open_nvml(self) -> None:
        try:
            # NVML is optional; torch on CUDA only: the parent imports this module.
            import pynvml
            import torch

            pynvml.nvmlInit()
            index = torch.cuda.current_device()
            self._nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # NVML is optional: no driver, no permission, no library
            self._nvml_handle = None

    def __enter__(self) -> MemoryTracker:
        if self.device == "cuda":
            import torch  # on CUDA only: the parent's watchdog imports this module

            torch.cuda.reset_peak_memory_stats()
            self._open_nvml()
        self._baseline_rss = tree_rss_bytes(self._process)
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        cuda_alloc = cuda_reserved = None
        if self.device == "cuda":
            import torch  # on CUDA only, as above

            cuda_alloc = torch.cuda.max_memory_allocated() / MIB
            cuda_reserved = torch.cuda.max_memory_reserved() / MIB
        high_water_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.report = MemoryResult(
            baseline_rss_mib=self._baseline_rss / MIB,
            peak_rss_mib=self._peak_rss / MIB,
            rss_high_water_mib=high_water_kib * 1024 / MIB,
            cuda_peak_allocated_mib=cuda_alloc,
            cuda_peak_reserved_mib=cuda_reserved,
            nvml_peak_used_mib=None if self._nvml_peak is None else self._nvml_peak / MIB,
            peak_anon_rss_mib=None if self._peak_anon is None else self._peak_anon / MIB,
            sample_interval_s=self.interval,
            samples=self._samples,
            method=("peak_rss: max RSS of worker + children (psutil) sampled every "
                    f"{self.interval * 1e3:g} ms over the case (children listed every "
                    f"{self.CHILDREN_REFRESH_S:g} s); rss_high_water: kernel "
                    "ru_maxrss of the worker over its life (includes imports); "
                    "peak_anon_rss: the worker's own RssAnon (no library file pages), "
                    "sampled alike; cuda: "
                    "torch.cuda.max_memory_allocated/reserved since case start; nvml: "
                    "device-wide used memory, all processes"),
        )
