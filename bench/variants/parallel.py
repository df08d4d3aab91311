"""Training across processes: how a rank's model is wrapped for the case's ``parallel``
mode, with PyTorch's own data-parallel engines.

- ``ddp``: ``DistributedDataParallel``, every rank a full replica, gradients all-reduced
  in buckets during backward.
- ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on each unit the model names
  (``fsdp_units()``: gpt's transformer blocks) and on the root: parameters, gradients and
  optimizer state sharded 1/N, parameters all-gathered per unit for forward and backward,
  gradients reduce-scattered.

Every rank draws the same global batch of ``world_size x batch_size`` from the same seeded
stream and trains on its own slice (``RankInfo.data_shard``): world N at per-rank batch b
sees the data of one process at batch N x b. The ranks are started by torch's elastic
launcher (bench.runners.ranks), one process group per case: gloo on a CPU, NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of the parent's start-up (the plan reads this module)
    import torch
    from torch import nn

PARALLEL_MODES = ("none", "ddp", "fsdp2")
PARALLEL_HELP = {
    "none": "one process",
    "ddp": "DistributedDataParallel: full replicas, gradients all-reduced",
    "fsdp2": "fully_shard: parameters, gradients and optimizer state sharded 1/N",
}


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in the case's process group."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.mode != "none"

    @property
    def data_shard(self) -> tuple[int, int]:
        """(this rank's slice, slices) of every global batch."""
        return (self.rank, self.world_size) if self.distributed else (0, 1)


def process_group_backend(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def unsupported_reason(mode: str, world_size: int, backend: str, precision: str) -> str | None:
    """Combinations this module does not build (the plan skips them with this reason)."""
    if mode == "none" and world_size != 1:
        return f"parallel=none runs one process (world_size {world_size} needs ddp or fsdp2)"
    if mode != "none" and backend != "eager":
        return f"parallel={mode} is measured on the eager backend (backend={backend} not built)"
    if mode != "none" and precision not in ("fp32", "bf16", "tf32"):
        return f"parallel={mode} trains in fp32, tf32 or bf16 autocast (not {precision})"
    return None


def parallelize(model: nn.Module, ranks: RankInfo, device: str) -> nn.Module:
    """The module a rank trains: ``model`` itself (none, and fsdp2, which shards it in
    place), or its DDP wrapper. Build the optimizer after this: fsdp2 replaces the
    parameters with sharded DTensors."""
    if ranks.mode == "none":
        return model
    if ranks.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel  # kept out of start-up

        ids = [ranks.local_rank] if device == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if ranks.mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard  # kept out of start-up

        units = getattr(model, "fsdp_units", None)
        for unit in units() if units else ():
            fully_shard(unit)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel mode {ranks.mode!r} (valid: {PARALLEL_MODES})")


@contextlib.contextmanager
def no_gradient_sync(runnable: nn.Module, ranks: RankInfo) -> Iterator[None]:
    """Steps in here skip the gradient all-reduce (DDP's ``no_sync``) or reduce-scatter
    (FSDP2's ``set_requires_gradient_sync(False)``; its parameter all-gathers remain): the
    same step without its gradient communication, for the exposed-communication figure."""
    if ranks.mode == "ddp":
        with runnable.no_sync():
            yield
    elif ranks.mode == "fsdp2":
        runnable.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            runnable.set_requires_gradient_sync(True)
    else:
        yield


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: the local shard of a DTensor, else ``t``."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t
