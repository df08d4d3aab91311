"""Shared training machinery: batches on the device, gradient accumulation, schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from bench.units import MIB
from bench.variants.parallel import local_tensor
from bench.variants.precision import Precision

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BatchStream:
    """Endless shuffled mini-batches of tensors already on the device; epoch by epoch,
    dropping the last partial batch (sizes larger than the data use the whole set).
    ``order`` draws an epoch's indices instead of a uniform shuffle (weighted sampling).
    ``shard`` (rank, ranks): every rank draws the same global batch of ranks x batch_size
    and takes its own slice, so N ranks see the data of one process at N x batch_size."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                 order: Callable[[torch.Generator], torch.Tensor] | None = None,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.x, self.y = x, y
        self.rank, self.ranks = shard
        self.batch_size = min(batch_size, len(x) // self.ranks)
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_per_epoch = len(x) // (self.batch_size * self.ranks)
        self.order = order or (lambda g: torch.randperm(len(self.x), generator=g))
        self._iter = self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.batch_size * self.ranks
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        while True:
            order = self.order(self.generator).to(self.x.device)
            for i in range(self.batches_per_epoch):
                idx = order[i * size:(i + 1) * size][mine]
                yield self.x[idx], self.y[idx]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self._iter)


def accumulate_gradients(model: nn.Module, loss_fn: LossFn,
                         micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
                         precision: Precision, device: str,
                         scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Forward and backward over k micro-batches, each loss divided by k, so the summed
    gradients equal those of one batch holding all k micro-batches (for mean losses
    over equal-size micro-batches). Returns the mean loss as a tensor (no sync)."""
    k = len(micro_batches)
    total = torch.zeros((), device=device)
    for x, y in micro_batches:
        with precision.context(device):  # x: one input tensor, or a tuple of them
            loss = loss_fn(model(*x) if isinstance(x, tuple) else model(x), y) / k
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach().float()
    return total


def sum_over_batches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     precision: Precision, device: str,
                     score: Callable[[torch.Tensor, torch.Tensor], float]) -> float:
    """``score(outputs, targets)`` summed over ``x`` in batches: eval mode, no autograd,
    under the case's precision (a validation pass)."""
    model.eval()
    total = 0.0
    with torch.inference_mode(), precision.context(device):
        for start in range(0, len(x), batch_size):
            total += score(model(x[start:start + batch_size]), y[start:start + batch_size])
    return total


def predict(model: nn.Module, x: torch.Tensor, batch_size: int, precision: Precision,
            device: str) -> torch.Tensor:
    """The model's outputs over ``x`` in batches: eval mode, no autograd, under the case's
    precision (a validation pass)."""
    model.eval()
    with torch.inference_mode(), precision.context(device):
        return torch.cat([model(x[start:start + batch_size])
                          for start in range(0, len(x), batch_size)])


def linear_warmup_decay(total_steps: int, warmup_fraction: float = 0.1) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over the first steps, then linear decay to zero."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def train_epochs(trainer: Trainer, epochs: int) -> list[float]:
    """Train for exactly ``epochs`` passes over the data; mean loss per epoch."""
    steps_per_epoch = max(1, trainer.stream.batches_per_epoch // trainer.accum_steps)
    curve = []
    for epoch in range(epochs):
        losses = torch.stack([trainer.step() for _ in range(steps_per_epoch)])
        curve.append(float(losses.mean()))
        if trainer.first_nonfinite_step is None and not math.isfinite(curve[-1]):
            bad = (~torch.isfinite(losses)).nonzero()
            trainer.first_nonfinite_step = epoch * steps_per_epoch + int(bad[0]) + 1
    return curve


class Trainer:
    """One optimizer step = ``accum_steps`` micro-batches, then clip, step, schedule, zero.
    ``scheduler``: anything with ``step()`` called once per optimizer step (a torch
    LRScheduler, or a recipe's ``Schedule``). With ``keep_losses`` each step's loss tensor
    is kept (no sync) until ``mean_loss`` reads them: an evaluated run's curve."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 stream: BatchStream, accum_steps: int, precision: Precision, device: str,
                 scheduler: object | None = None, grad_clip: float = 0.0,
                 keep_losses: bool = False) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.stream, self.accum_steps = stream, accum_steps
        self.precision, self.device, self.scheduler = precision, device, scheduler
        self.grad_clip = grad_clip
        self.kept_losses: list[torch.Tensor] | None = [] if keep_losses else None
        # fp16 gradients underflow without loss scaling; the scaler is a no-op otherwise.
        self.scaler = torch.amp.GradScaler(device, enabled=precision.name == "fp16")
        self.steps = 0
        # Set by train_epochs: the 1-based optimizer step whose loss was first NaN or inf.
        self.first_nonfinite_step: int | None = None

    @property
    def samples_per_step(self) -> int:
        return self.stream.batch_size * self.accum_steps

    def gradients(self) -> torch.Tensor:
        """Forward and backward of one optimizer step's batches; their mean loss."""
        batches = [self.stream.next() for _ in range(self.accum_steps)]
        return accumulate_gradients(self.model, self.loss_fn, batches, self.precision,
                                    self.device, self.scaler)

    def step(self) -> torch.Tensor:
        self.model.train()
        loss = self.gradients()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1
        if self.kept_losses is not None:
            self.kept_losses.append(loss)
        return loss

    def mean_loss(self) -> float:
        """Mean loss of the steps since the last call (one sync; NaN when none)."""
        if not self.kept_losses:
            return float("nan")
        mean = float(torch.stack(self.kept_losses).mean())
        self.kept_losses.clear()
        return mean


def memory_split(model: nn.Module, optimizer: torch.optim.Optimizer,
                 saved_activation_bytes: int) -> dict[str, object]:
    """Parameters, gradients (of the trainable parameters only: what freezing saves),
    optimizer state and saved activations, in MiB: this rank's share where they are
    sharded (fsdp2's DTensors)."""
    reshard = getattr(model, "reshard", None)
    if callable(reshard):  # fsdp2 keeps the root's parameters gathered after a forward
        reshard()
    params = [local_tensor(p) for p in {id(p): p for p in model.parameters()}.values()]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    state_bytes = sum(local_tensor(t).numel() * t.element_size()
                      for state in optimizer.state.values()
                      for t in state.values() if isinstance(t, torch.Tensor))
    return {"parameters_mib": param_bytes / MIB, "gradients_mib": grad_bytes / MIB,
            "optimizer_state_mib": state_bytes / MIB,
            "activations_saved_mib": saved_activation_bytes / MIB,
            "method": "parameters and gradients: numel x element size of the fp32 master "
                      "weights (a tied weight once; gradients of trainable parameters "
                      "only; a sharded parameter's local shard); optimizer state: the "
                      "optimizer's state tensors after the steps taken; activations: bytes "
                      "of the tensors autograd saves for backward in one micro-batch "
                      "forward (saved_tensors_hooks, distinct storages), on the eager model"}


def activation_bytes(model: nn.Module, forward_loss: Callable[[], torch.Tensor],
                     precision: Precision, device: str) -> int:
    """Bytes autograd keeps for backward over one forward (``forward_loss`` runs it and
    returns the loss): what checkpointing trades, and what freezing layers saves."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # A DTensor (tensor parallelism) saves its local shard: a wrapper has no storage.
        with torch.no_grad():
            storage = local_tensor(t).untyped_storage()
        seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            precision.context(device):
        loss = forward_loss()
    # Parameters are saved for backward too, but they exist anyway: not activations.
    param_ptrs = {local_tensor(p).untyped_storage().data_ptr() for p in model.parameters()}
    if loss.requires_grad:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(n for (ptr, _), n in seen.items() if ptr not in param_ptrs)


class PipelineTrainer(Trainer):
    """A Trainer whose gradients come from one batch run through a pipeline
    (bench.variants.parallel.Pipeline: its micro-batches replace gradient accumulation);
    ``model`` is this rank's stage, which its optimizer steps."""

    def __init__(self, pipeline: object, optimizer: torch.optim.Optimizer,
                 stream: BatchStream, precision: Precision, device: str,
                 scheduler: object | None = None, keep_losses: bool = False) -> None:
        super().__init__(pipeline.module, optimizer, lambda out, y: out, stream, 1, precision,
                         device, scheduler, keep_losses=keep_losses)
        self.pipeline = pipeline

    def gradients(self) -> torch.Tensor:
        x, y = self.stream.next()
        with self.precision.context(self.device):
            return self.pipeline.step(x, y)
