"""Training across processes: how a rank's model is wrapped for the case's ``parallel``
mode, with PyTorch's own data-parallel engines.

- ``ddp``: ``DistributedDataParallel``, every rank a full replica, gradients all-reduced
  in buckets during backward.
- ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on each unit the model names
  (``fsdp_units()``: gpt's transformer blocks) and on the root: parameters, gradients and
  optimizer state sharded 1/N, parameters all-gathered per unit for forward and backward,
  gradients reduce-scattered.
- ``tp``: tensor parallelism (``torch.distributed.tensor.parallel.parallelize_module`` on a
  one-dimensional DeviceMesh of the ranks, with the plan the model names:
  ``tensor_parallel_plan(world)``, gpt's Megatron-style column- and row-wise splits): each
  rank holds its slice of every split layer and every rank trains on the same batch.
- ``fsdp2_tp``: both on a two-dimensional DeviceMesh (``world_size / tp_size`` x
  ``tp_size``, named dp and tp): tensor parallelism inside each group of ``tp_size``
  consecutive ranks, FSDP2 sharding across the groups, which train on different slices
  of the batch.
- ``hogwild``: asynchronous training (Recht et al., 2011) on one machine: the parameters
  live in one shared-memory mapping (``torch.from_file(shared=True)`` in the folder the
  launcher names in ``BENCH_SHARED_DIR``) that every rank's optimizer updates without locks
  or gradient communication; one optimizer, with its own state, per rank.

Every rank draws the same global batch of ``world_size x batch_size`` from the same seeded
stream and trains on its own slice (``RankInfo.data_shard``): world N at per-rank batch b
sees the data of one process at batch N x b. The ranks are started by torch's elastic
launcher (bench.runners.ranks), one process group per case: gloo on a CPU, NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of the parent's start-up (the plan reads this module)
    import torch
    from torch import nn

PARALLEL_MODES = ("none", "ddp", "fsdp2", "tp", "pp", "fsdp2_tp", "hogwild")
# Modes that split the model itself: the workload's model names how (a plan, stages).
MODEL_PARALLEL_MODES = ("tp", "pp", "fsdp2_tp")
# The tensor-parallel group size fsdp2_tp takes unless the case's tp_size says otherwise.
DEFAULT_TP_SIZE = 2
# torch.distributed.pipelining's schedules by axis value.
PIPELINE_SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
                      "interleaved_1f1b": "ScheduleInterleaved1F1B"}
# Stages each rank holds under a schedule (interleaved: looped, rank r the stages r, r + N...).
STAGES_PER_RANK = {"interleaved_1f1b": 2}
PARALLEL_HELP = {
    "none": "one process",
    "ddp": "DistributedDataParallel: full replicas, gradients all-reduced",
    "fsdp2": "fully_shard: parameters, gradients and optimizer state sharded 1/N",
    "tp": "tensor parallel: each layer's matrices split over the ranks (column- then "
          "row-wise), activations all-reduced; every rank the same batch (gpt)",
    "pp": "pipeline parallel: the model's blocks in one stage per rank, the batch in "
          "micro-batches flowing through them (pp_schedule, microbatches; gpt)",
    "fsdp2_tp": "2-D: tensor parallel inside groups of tp_size ranks, fsdp2 across the "
                "groups (world_size / tp_size slices of the batch; gpt)",
    "hogwild": "asynchronous: one shared-memory model, each rank's optimizer updates it "
               "without locks (CPU, one machine)",
}
SHARED_DIR_ENV = "BENCH_SHARED_DIR"
_shared_models = itertools.count()


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in the case's process group."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tp_size: int = DEFAULT_TP_SIZE  # fsdp2_tp's tensor-parallel group size
    sequence_parallel: bool = False  # tp, fsdp2_tp: the residual stream split by tokens

    @classmethod
    def of_case(cls, case: object, rank: int, world_size: int, local_rank: int = 0) -> RankInfo:
        """Where rank ``rank`` of ``world_size`` stands in a case (a CaseSpec) of its mode."""
        axes = getattr(case, "axes", {})
        return cls(getattr(case, "parallel", "none"), rank, world_size, local_rank,
                   axes.get("tp_size", DEFAULT_TP_SIZE), bool(axes.get("sequence_parallel")))

    @property
    def distributed(self) -> bool:
        return self.mode != "none"

    @property
    def tensor_parallel_size(self) -> int:
        """Ranks that split each layer between them (and share a batch)."""
        return {"tp": self.world_size, "fsdp2_tp": self.tp_size}.get(self.mode, 1)

    @property
    def data_parallel_size(self) -> int:
        """How many different slices of the data the ranks train on at once."""
        if not self.distributed or self.mode == "pp":
            return 1
        return self.world_size // self.tensor_parallel_size

    @property
    def data_shard(self) -> tuple[int, int]:
        """(this rank's slice, slices) of every global batch: a tensor-parallel group's
        ranks (consecutive ranks, the mesh's inner dimension) share theirs."""
        slices = self.data_parallel_size
        return (self.rank // self.tensor_parallel_size, slices) if slices > 1 else (0, 1)


def process_group_backend(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def unsupported_reason(mode: str, world_size: int, backend: str, precision: str) -> str | None:
    """Combinations this module does not build (the plan skips them with this reason)."""
    if mode == "none" and world_size != 1:
        return f"parallel=none runs one process (world_size {world_size} needs a parallel " \
               f"mode: {', '.join(m for m in PARALLEL_MODES if m != 'none')})"
    if mode != "none" and backend != "eager":
        return f"parallel={mode} is measured on the eager backend (backend={backend} not built)"
    if mode != "none" and precision not in ("fp32", "bf16", "tf32"):
        return f"parallel={mode} trains in fp32, tf32 or bf16 autocast (not {precision})"
    return None


def mesh_reason(mode: str, world_size: int, tp_size: int) -> str | None:
    """Why fsdp2_tp's two-dimensional mesh cannot be laid over ``world_size`` ranks."""
    if mode == "fsdp2_tp" and (tp_size < 2 or world_size % tp_size
                               or world_size // tp_size < 2):
        return f"parallel=fsdp2_tp lays world_size {world_size} out as (world_size / " \
               f"tp_size) x tp_size with both at least 2: tp_size {tp_size} does not fit " \
               f"(e.g. world_size 4, tp_size 2)"
    return None


def device_reason(mode: str, device: str) -> str | None:
    if mode == "hogwild" and device != "cpu":
        return "parallel=hogwild shares host memory between processes: CPU only (ddp on CUDA)"
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
    if ranks.mode == "tp":
        from torch.distributed.device_mesh import init_device_mesh  # kept out of start-up
        from torch.distributed.tensor.parallel import parallelize_module

        plan = getattr(model, "tensor_parallel_plan", None)
        if plan is None:
            raise ValueError(f"{type(model).__name__} names no tensor_parallel_plan")
        mesh = init_device_mesh(device, (ranks.world_size,))
        return parallelize_module(model, mesh, _plan(plan, ranks))
    if ranks.mode == "fsdp2_tp":
        return _fsdp2_over_tensor_parallel(model, ranks, device)
    if ranks.mode == "hogwild":
        _share_parameters(model, ranks)
        return model
    raise ValueError(f"unknown parallel mode {ranks.mode!r} (valid: {PARALLEL_MODES})")


def _plan(plan: Callable[..., dict[str, object]], ranks: RankInfo) -> dict[str, object]:
    """The model's tensor-parallel plan for this rank's group, sequence-parallel if asked."""
    size = ranks.tensor_parallel_size
    return plan(size, sequence_parallel=True) if ranks.sequence_parallel else plan(size)


def _fsdp2_over_tensor_parallel(model: nn.Module, ranks: RankInfo, device: str) -> nn.Module:
    """The model split by its tensor-parallel plan inside each group of tp_size ranks (the
    mesh's tp dimension), then sharded by fully_shard across the groups (its dp dimension),
    as torchtitan composes them: FSDP2 shards the DTensors TP made along the dp mesh."""
    from torch.distributed.device_mesh import init_device_mesh  # kept out of start-up
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    plan = getattr(model, "tensor_parallel_plan", None)
    units = getattr(model, "fsdp_units", None)
    if plan is None or units is None:
        raise ValueError(f"{type(model).__name__} names no tensor_parallel_plan and fsdp_units")
    tp = ranks.tensor_parallel_size
    mesh = init_device_mesh(device, (ranks.world_size // tp, tp), mesh_dim_names=("dp", "tp"))
    parallelize_module(model, mesh["tp"], _plan(plan, ranks))
    for unit in units():
        fully_shard(unit, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model


@contextlib.contextmanager
def no_gradient_sync(runnable: nn.Module, ranks: RankInfo) -> Iterator[None]:
    """Steps in here skip the gradient all-reduce (DDP's ``no_sync``) or reduce-scatter
    (FSDP2's ``set_requires_gradient_sync(False)``; its parameter all-gathers remain): the
    same step without its gradient communication, for the exposed-communication figure."""
    if ranks.mode == "ddp":
        with runnable.no_sync():
            yield
    elif ranks.mode in ("fsdp2", "fsdp2_tp"):  # the dp mesh's reduce-scatter only
        runnable.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            runnable.set_requires_gradient_sync(True)
    else:
        yield


def _share_parameters(model: nn.Module, ranks: RankInfo) -> None:
    """Point every parameter of ``model`` into one file-backed shared mapping, rank 0's
    values copied in first: after this every rank trains the same tensors."""
    import torch  # kept out of start-up
    import torch.distributed as dist

    folder = os.environ.get(SHARED_DIR_ENV)
    if not folder:
        raise RuntimeError(f"parallel=hogwild needs {SHARED_DIR_ENV} (a folder every rank "
                           "of this machine maps; the launcher sets it)")
    params = list({id(p): p for p in model.parameters()}.values())
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise ValueError(f"parallel=hogwild shares parameters of one dtype, not {dtypes}")
    (dtype,) = dtypes
    total = sum(p.numel() for p in params)
    path = os.path.join(folder, f"parameters-{next(_shared_models)}.bin")
    if ranks.rank == 0:
        with open(path, "wb") as f:
            f.truncate(total * torch.empty((), dtype=dtype).element_size())
        shared = torch.from_file(path, shared=True, size=total, dtype=dtype)
        offset = 0
        for p in params:
            shared[offset:offset + p.numel()].copy_(p.detach().flatten())
            offset += p.numel()
    dist.barrier()
    if ranks.rank != 0:
        shared = torch.from_file(path, shared=True, size=total, dtype=dtype)
    offset = 0
    for p in params:
        p.data = shared[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    dist.barrier()  # nobody trains before every rank is mapped


class Pipeline:
    """This rank's stages of a pipeline over a model that names its stages
    (``pipeline_stage(stage, stages)``; ``tied_weight()`` if the first and the last stage
    share one): torch.distributed.pipelining's
    PipelineStage under the schedule asked for, one stage per rank (gpipe, 1f1b) or two in
    a loop (interleaved_1f1b: rank r of N holds stages r and r + N), ``microbatches``
    micro-batches per step (gradients scaled by 1 / microbatches: the batch's mean loss).

    Every rank holds the whole model and trains its stage's parameters in place; the
    others are brought from their owners for evaluation (``gather``). The weight the first
    stage's embedding and the last stage's head share gets their summed gradient on both,
    so the two copies take the same optimizer steps, as one tied weight would."""

    def __init__(self, model: nn.Module, ranks: RankInfo, device: str, microbatches: int,
                 schedule: str, loss_fn: object) -> None:
        import torch  # kept out of start-up
        import torch.distributed as dist
        from torch import nn
        from torch.distributed import pipelining

        self.model, self.ranks = model, ranks
        world, self.per_rank = ranks.world_size, STAGES_PER_RANK.get(schedule, 1)
        stages = world * self.per_rank
        self.stages = [model.pipeline_stage(s, stages) for s in range(stages)]
        self.own = [ranks.rank + k * world for k in range(self.per_rank)]
        mine = [self.stages[s] for s in self.own]
        self.module = mine[0] if len(mine) == 1 else nn.ModuleList(mine)
        self.first, self.last = ranks.rank == 0, ranks.rank == world - 1
        runtime = [pipelining.PipelineStage(self.stages[s], s, stages, torch.device(device))
                   for s in self.own]
        self.clock = _SpanClock(device)
        # This rank's compute: its forward and backward of each micro-batch (the schedule
        # waits on the other stages between them).
        for stage in runtime:
            for chunk in ("forward_one_chunk", "backward_one_chunk"):
                setattr(stage, chunk, self.clock.timed(getattr(stage, chunk)))
        # Gradients scaled here, once per parameter: the schedule scales each stage's own,
        # twice for the tied weight when one rank holds the first and the last stage.
        self.schedule = getattr(pipelining, PIPELINE_SCHEDULES[schedule])(
            runtime if self.per_rank > 1 else runtime[0], microbatches, loss_fn=loss_fn,
            scale_grads=False)
        self.microbatches, self.schedule_name = microbatches, schedule
        ends = sorted({0, world - 1})
        self.tied = getattr(model, "tied_weight", None)  # a weight first and last share
        self.tie_group = None if len(ends) == 1 or self.tied is None else \
            dist.group.WORLD if world == 2 else dist.new_group(ends)

    @property
    def theoretical_bubble(self) -> float:
        """The idle share of a step in a synchronous schedule (GPipe's and 1F1B's alike):
        (ranks - 1) / (microbatches + ranks - 1); interleaved over v stages per rank,
        (ranks - 1) / (v x microbatches + ranks - 1) (Narayanan et al., 2021)."""
        ranks = self.ranks.world_size
        return (ranks - 1) / (self.per_rank * self.microbatches + ranks - 1)

    def owner(self, stage: int) -> int:
        """The rank that trains stage ``stage``."""
        return stage % self.ranks.world_size

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one batch through the pipeline; the batch's mean loss
        on every rank (the last stage's, broadcast)."""
        import torch  # kept out of start-up
        import torch.distributed as dist

        losses: list[torch.Tensor] = []
        args = (x,) if self.first else ()
        targets = {"target": y, "losses": losses} if self.last else {}
        self.clock.timed(self.schedule.step, whole=True)(*args, **targets)
        for p in self.module.parameters():  # unique: the batch's mean loss
            if p.grad is not None:
                p.grad.div_(self.microbatches)
        if self.tie_group is not None and (self.first or self.last):
            dist.all_reduce(self.tied().grad, group=self.tie_group)
        loss = torch.stack(losses).mean().detach() if self.last else \
            torch.zeros((), device=x.device)
        dist.broadcast(loss, src=self.owner(len(self.stages) - 1))
        return loss

    def bubbles(self) -> list[float]:
        """Per step so far: the share of the schedule's run (from the first micro-batch in
        to the last gradient out) this rank's stage spent outside its forward and backward
        chunks: its measured bubble, waiting on the other stages and their sends."""
        return [max(0.0, 1 - busy / whole) for busy, whole in self.clock.spans() if whole > 0]

    def gather(self) -> None:
        """Every stage's parameters from the rank that trains them into this rank's whole
        model (before evaluating it)."""
        import torch  # kept out of start-up
        import torch.distributed as dist

        done: set[int] = set()
        for index, stage in enumerate(self.stages):
            for p in stage.parameters():
                if id(p) not in done:
                    done.add(id(p))
                    with torch.no_grad():
                        dist.broadcast(p.data, src=self.owner(index))


SPAN_STEPS_KEPT = 4096


class _SpanClock:
    """Seconds inside wrapped calls: per ``whole`` call (a pipeline step), the time of the
    inner calls it made and its own. On CUDA, event pairs on the current stream (the
    device's time, read when asked, so timing adds no host sync); elsewhere perf_counter."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self._inner: list[object] = []
        # The latest steps' spans (a long time-to-accuracy run keeps only these).
        self._steps: deque[tuple[list[object], object]] = deque(maxlen=SPAN_STEPS_KEPT)

    def _span(self, call: Callable[..., object], *args: object,
              **kwargs: object) -> tuple[object, object]:
        # On use: the parent's plan reads this module without torch.
        import torch

        if self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            out = call(*args, **kwargs)
            end.record()
            return out, (start, end)
        began = time.perf_counter()
        out = call(*args, **kwargs)
        return out, time.perf_counter() - began

    def timed(self, call: Callable[..., object], whole: bool = False) -> Callable[..., object]:
        def wrapped(*args: object, **kwargs: object) -> object:
            if whole:
                self._inner = []
            out, span = self._span(call, *args, **kwargs)
            if whole:
                self._steps.append((self._inner, span))
            else:
                self._inner.append(span)
            return out

        return wrapped

    def spans(self) -> list[tuple[float, float]]:
        """Per whole call: (seconds in its inner calls, its own seconds)."""
        if self.cuda:
            import torch  # kept out of start-up

            torch.cuda.synchronize()

        def seconds(span: object) -> float:
            if isinstance(span, float):
                return span
            start, end = span  # type: ignore[misc]
            return start.elapsed_time(end) / 1e3

        return [(sum(seconds(s) for s in inner), seconds(whole)) for inner, whole in self._steps]


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: the local shard of a DTensor, else ``t``."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t
