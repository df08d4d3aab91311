"""Energy of a timed region: counters read before and after it.

On CUDA, NVML's total-energy counter of the case's GPU (``nvmlDeviceGetTotalEnergyConsumption``,
millijoules since the driver loaded; Volta and later). On CPUs that expose RAPL through
the powercap interface (``/sys/class/powercap/intel-rapl:*``, also used by AMD's RAPL),
each package's counter and its DRAM sub-domain where there is one (core and uncore are
parts of the package and are not added again); a counter that wrapped is unwrapped with
its ``max_energy_range_uj``. Elsewhere the record says why nothing was measured (no
powercap, counters readable by root only, no NVML): never a made-up figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.results.schema import EnergyResult

POWERCAP = Path("/sys/class/powercap")


@dataclass
class _Counter:
    name: str
    read: Any  # () -> joules, cumulative
    wrap_j: float | None = None


def _rapl_counters(root: Path) -> tuple[list[_Counter], str | None]:
    """Package and DRAM counters under ``root``, or why there are none."""
    if not root.is_dir():
        return [], f"no RAPL here: {root} does not exist (a VM or a kernel without powercap)"
    zones = sorted(p for p in root.glob("intel-rapl:*") if (p / "energy_uj").exists())
    if not zones:
        return [], f"no RAPL here: {root} has no intel-rapl zone with an energy_uj counter"
    counters = []
    for zone in zones:
        name = (zone / "name").read_text().strip() if (zone / "name").exists() else zone.name
        depth = zone.name.count(":")
        if depth > 1 and name != "dram":  # core/uncore: already inside the package counter
            continue
        path = zone / "energy_uj"
        try:
            path.read_text()
        except OSError as exc:
            return [], f"RAPL counters not readable ({path}: {exc.strerror}; root only since " \
                       "the PLATYPUS mitigation)"
        wrap = zone / "max_energy_range_uj"
        counters.append(_Counter(f"rapl:{zone.name}:{name}",
                                 lambda p=path: int(p.read_text()) * 1e-6,
                                 int(wrap.read_text()) * 1e-6 if wrap.exists() else None))
    return counters, None


def _nvml_counters() -> tuple[list[_Counter], str | None]:
    try:
        import pynvml  # optional (nvidia-ml-py): GPU hosts only
        import torch

        pynvml.nvmlInit()
        index = torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:  # noqa: BLE001 - no driver, no library, a GPU before Volta
        return [], f"NVML energy counter not readable: {type(exc).__name__}: {exc}"
    return [_Counter(f"nvml:gpu{index}",
                     lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) * 1e-3)], None


NVML_METHOD = ("NVML nvmlDeviceGetTotalEnergyConsumption of the case's GPU (torch's current "
               "device index), read before and after the region")
NVML_RESOLUTION = "1 mJ counter, refreshed by the driver every few tens of ms: regions " \
                  "under about 1 s carry a few percent of error"
RAPL_METHOD = "RAPL through powercap: energy_uj of each package and its dram zone, read " \
              "before and after the region, unwrapped with max_energy_range_uj"
RAPL_RESOLUTION = "1 uJ counters, updated about every 1 ms; whole-package energy (every " \
                  "process on the socket, not this case alone)"


@dataclass
class EnergyMeter:
    """``with EnergyMeter(device) as meter: ...`` then ``meter.result(samples)``."""

    device: str
    powercap: Path = POWERCAP
    _counters: list[_Counter] = field(default_factory=list)
    _reason: str | None = None
    _before: list[float] = field(default_factory=list)
    _after: list[float] = field(default_factory=list)
    _started: float = 0.0
    _seconds: float = 0.0

    def __enter__(self) -> EnergyMeter:
        if self.device == "cuda":
            self._counters, self._reason = _nvml_counters()
        else:
            self._counters, self._reason = _rapl_counters(self.powercap)
        self._before = [c.read() for c in self._counters]
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._seconds = time.perf_counter() - self._started
        self._after = [c.read() for c in self._counters]

    def result(self, samples: int | None) -> EnergyResult:
        method = NVML_METHOD if self.device == "cuda" else RAPL_METHOD
        if not self._counters:
            return EnergyResult(measured=False, method=method, seconds=self._seconds,
                                samples=samples, reason=self._reason)
        domains = {}
        for counter, before, after in zip(self._counters, self._before, self._after,
                                          strict=True):
            used = after - before
            if used < 0 and counter.wrap_j:
                used += counter.wrap_j
            domains[counter.name] = used
        joules = sum(domains.values())
        per_sample = joules / samples if samples else None
        return EnergyResult(
            measured=True, method=method, seconds=self._seconds, joules=joules,
            samples=samples, joules_per_sample=per_sample,
            samples_per_joule=samples / joules if samples and joules > 0 else None,
            mean_watts=joules / self._seconds if self._seconds > 0 else None,
            domains=domains,
            resolution=NVML_RESOLUTION if self.device == "cuda" else RAPL_RESOLUTION)
