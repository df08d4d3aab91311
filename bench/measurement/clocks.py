"""Clocks during the timed region, sampled by a thread, and whether the case throttled.

On CUDA (NVML): SM clock, temperature, power draw and the clock-event (throttle) reasons
of the case's GPU. On the CPU: ``scaling_cur_freq`` of every core where the kernel
exposes cpufreq (VMs often do not: the record says so). A case is ``throttled`` when NVML
reported a thermal, power-cap or hardware slowdown reason, or when the clock (the GPU's
SM clock; the CPU's fastest core per sample) fell below ``DROP`` of its peak in the region.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Any

from bench.measurement.periodic import PeriodicSampler
from bench.results.schema import ClockResult

CPUFREQ = Path("/sys/devices/system/cpu")
# A sample below this fraction of the region's peak clock is a drop.
DROP = 0.85
INTERVAL_S = 0.1
# NVML clock-event reasons that mean the clocks were held down by power or heat (idle,
# application clocks and sync boost are not throttling).
_NVML_THROTTLES = {
    "SW power cap": "nvmlClocksEventReasonSwPowerCap",
    "HW slowdown": "nvmlClocksEventReasonHwSlowdown",
    "HW thermal slowdown": "nvmlClocksEventReasonHwThermalSlowdown",
    "HW power brake": "nvmlClocksEventReasonHwPowerBrakeSlowdown",
    "SW thermal slowdown": "nvmlClocksEventReasonSwThermalSlowdown",
}
METHOD = (f"sampled every {INTERVAL_S:g} s during the timed region; throttled: an NVML "
          f"thermal/power/hardware slowdown reason seen, or the clock (GPU SM; CPU: the "
          f"fastest core of each sample) below {DROP:.0%} of its peak in the region")


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


class ClockSampler(PeriodicSampler):
    """``with ClockSampler(device) as clocks: ...`` then ``clocks.result()``. Where nothing
    is readable (no cpufreq, no NVML) no thread wakes inside the region."""

    def __init__(self, device: str, cpufreq: Path = CPUFREQ,
                 interval_s: float = INTERVAL_S) -> None:
        super().__init__(interval_s, "clock-sampler")
        self.device = device
        self._cpu_files = sorted(cpufreq.glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
        self.unreadable: list[str] = []
        if not self._cpu_files:
            self.unreadable.append(f"cpu frequency: no {cpufreq}/cpu*/cpufreq/"
                                   "scaling_cur_freq (no cpufreq driver: common in VMs)")
        self.cpu_mhz: list[float] = []
        self.sm_mhz: list[float] = []
        self.temperature: list[float] = []
        self.power: list[float] = []
        self.reasons: set[str] = set()
        self._nvml: Any = None
        self._handle: Any = None
        self.samples = 0

    def _open_nvml(self) -> None:
        try:
            import pynvml  # optional (nvidia-ml-py): GPU hosts only
            import torch

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self._nvml = pynvml
        except Exception as exc:  # noqa: BLE001 - NVML is optional
            self.unreadable.append(f"gpu clocks: NVML not readable ({type(exc).__name__})")

    def _sample(self) -> None:
        if self._cpu_files:
            with contextlib.suppress(OSError, ValueError):
                self.cpu_mhz.append(max(int(f.read_text()) for f in self._cpu_files) / 1000)
        if self._nvml is not None:
            n, h = self._nvml, self._handle
            try:
                self.sm_mhz.append(float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)))
                self.temperature.append(float(n.nvmlDeviceGetTemperature(
                    h, n.NVML_TEMPERATURE_GPU)))
                self.power.append(n.nvmlDeviceGetPowerUsage(h) / 1000)
                getter = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons",
                                 getattr(n, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
                mask = getter(h) if getter else 0
                for label, const in _NVML_THROTTLES.items():
                    bit = getattr(n, const, None)
                    if bit is not None and mask & bit:
                        self.reasons.add(label)
            except Exception:  # noqa: BLE001 - a field this GPU/driver lacks
                pass
        self.samples += 1

    def __enter__(self) -> ClockSampler:
        if self.device == "cuda":
            self._open_nvml()
        self.start(thread=bool(self._cpu_files) or self._nvml is not None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def result(self) -> ClockResult:
        dropped = [name for name, values in (("gpu SM clock", self.sm_mhz),
                                             ("cpu clock", self.cpu_mhz))
                   if values and min(values) < DROP * max(values)]
        return ClockResult(samples=self.samples, interval_s=self.interval,
                           throttled=bool(self.reasons or dropped), method=METHOD,
                           cpu_mhz=_spread(self.cpu_mhz), gpu_sm_mhz=_spread(self.sm_mhz),
                           gpu_temperature_c=_spread(self.temperature),
                           gpu_power_w=_spread(self.power),
                           throttle_reasons=sorted(self.reasons)
                           + [f"{d} dropped below {DROP:.0%} of its peak" for d in dropped],
                           unreadable=self.unreadable)

    def warning(self) -> str | None:
        """The case's ``throttled`` warning, or None."""
        result = self.result()
        if not result.throttled:
            return None
        return "throttled: " + "; ".join(result.throttle_reasons)
