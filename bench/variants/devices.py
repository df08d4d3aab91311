"""Which devices this machine has."""

from __future__ import annotations

import functools


@functools.cache
def device_unavailable_reason(device: str) -> str | None:
    if device == "cpu":
        return None
    if device == "cuda":
        # torch on use: the planner (and so the pytest plugin, in every pytest run) imports us.
        import torch

        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (CPU-only build)"
            return f"CUDA not available (torch {torch.__version__}, CUDA build {build})"
        return None
    return f"unknown device {device!r}"
