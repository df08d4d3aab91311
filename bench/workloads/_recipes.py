"""Training recipes as axes: optimizer, learning-rate schedule, regularization, sampling
and loss, built from torch's own optimizers, schedulers and samplers.

A schedule's horizon is the recipe's planned training length (the workload's ``epochs``
parameter, in optimizer steps): a time-to-accuracy run that reaches its target sooner
stops there, one that goes on past it keeps the schedule's last learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import WeightedRandomSampler

from bench.spec.axes import Setting
from bench.workloads._training import linear_warmup_decay

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "warmup_linear", "warmup_cosine", "step", "cyclic", "onecycle",
             "plateau")
SAMPLINGS = ("uniform", "weighted", "hard_examples")
LOSSES = ("ce", "class_weighted_ce", "focal")

MOMENTUM = 0.9
WARMUP_FRACTION = 0.1  # of the horizon: warmup_linear, warmup_cosine
STEP_MILESTONES = (0.5, 0.75)  # step: LR x STEP_GAMMA at half and three quarters
STEP_GAMMA = 0.1
CYCLE_EPOCHS = 2  # cyclic: epochs from base to max LR (triangular2: amplitude halves)
CYCLE_BASE_FRACTION = 0.1  # cyclic base LR, as a fraction of lr
PLATEAU_FACTOR = 0.3  # plateau: LR x this after PLATEAU_PATIENCE evaluations of no gain
PLATEAU_PATIENCE = 2
FOCAL_GAMMA = 2.0  # focal loss (Lin et al. 2017): (1 - p_t)^gamma x cross-entropy
HARD_FRACTION = 0.5  # hard_examples: the hardest half of each batch is back-propagated


def recipe_axes(optimizer: str, lr: float | None, dropout: bool = True,
                classification: bool = False, weight_decay: float = 0.0) -> dict[str, Setting]:
    """The recipe axes of a training phase (``phases=("train",)``); ``lr=None``: the
    workload keeps its learning rate a parameter."""
    train = ("train",)
    axes = {
        "optimizer": Setting("optimizer", str, optimizer, choices=OPTIMIZERS, phases=train,
                             help=f"sgd, momentum (SGD, {MOMENTUM}), adam, adamw"),
    }
    if lr is not None:
        axes["lr"] = Setting("lr", float, lr, minimum=0, above_minimum=True, phases=train,
                             help="peak learning rate")
    axes |= {
        "lr_schedule": Setting("lr_schedule", str, "constant", choices=SCHEDULES,
                               phases=train, help="torch.optim.lr_scheduler over the "
                                                  "planned epochs"),
        "weight_decay": Setting("weight_decay", float, weight_decay, minimum=0, phases=train,
                                help="L2 (sgd, momentum, adam) or decoupled (adamw)"),
        "grad_clip": Setting("grad_clip", float, 0.0, minimum=0, phases=train,
                             help="max gradient norm (0: no clipping)"),
        "early_stopping": Setting("early_stopping", int, 0, minimum=0, phases=train,
                                  help="patience in evaluations (0: off; evaluated runs)"),
    }
    if dropout:
        axes["dropout"] = Setting("dropout", float, 0.0, minimum=0, maximum=0.95,
                                  phases=train, help="dropout probability")
    if classification:
        axes["sampling"] = Setting("sampling", str, "uniform", choices=SAMPLINGS, phases=train,
                                   help="uniform, weighted (class-balanced "
                                        "WeightedRandomSampler), hard_examples (online "
                                        "hard-example mining)")
        axes["loss"] = Setting("loss", str, "ce", choices=LOSSES, phases=train)
    return axes


def build_optimizer(name: str, parameters, lr: float,  # noqa: ANN001 - params or groups
                    weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(parameters, lr=lr, momentum=MOMENTUM, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (valid: {', '.join(OPTIMIZERS)})")


class Schedule:
    """A learning-rate schedule stepped once per optimizer step (``plateau``: once per
    evaluation, on the watched metric), over ``horizon_steps``; after it the LR stays where
    the schedule ended (``cyclic`` goes on cycling)."""

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, horizon_steps: int,
                 steps_per_epoch: int, lr: float, higher_is_better: bool = True) -> None:
        self.name, self.horizon = name, max(1, horizon_steps)
        self.steps = 0
        self.scheduler = _scheduler(name, optimizer, self.horizon, steps_per_epoch, lr,
                                    higher_is_better)

    def step(self) -> None:
        """After each optimizer step (Trainer calls it)."""
        self.steps += 1
        if self.scheduler is None or self.name == "plateau":
            return
        if self.steps > self.horizon and self.name != "cyclic":
            # Past the planned length the LR stays at its final value: cosine annealing
            # would climb back up, OneCycleLR raises past total_steps.
            return
        self.scheduler.step()

    def after_eval(self, metric: float) -> None:
        if self.name == "plateau" and math.isfinite(metric):
            self.scheduler.step(metric)

    def describe(self) -> str:
        return f"{self.name} over {self.horizon} optimizer steps"


def _scheduler(name: str, optimizer: torch.optim.Optimizer, total: int, per_epoch: int,
               lr: float, higher_is_better: bool):  # noqa: ANN202 - torch's scheduler types
    sched = torch.optim.lr_scheduler
    warmup = max(1, int(total * WARMUP_FRACTION))
    if name == "constant":
        return None
    if name == "warmup_linear":
        return sched.LambdaLR(optimizer, linear_warmup_decay(total, WARMUP_FRACTION))
    if name == "warmup_cosine":
        return sched.SequentialLR(optimizer, [
            sched.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup),
            sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))],
            milestones=[warmup])
    if name == "step":
        return sched.MultiStepLR(optimizer, [int(total * m) for m in STEP_MILESTONES],
                                 gamma=STEP_GAMMA)
    if name == "cyclic":
        return sched.CyclicLR(optimizer, base_lr=lr * CYCLE_BASE_FRACTION, max_lr=lr,
                              step_size_up=max(1, CYCLE_EPOCHS * per_epoch), mode="triangular2",
                              cycle_momentum=False)
    if name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    if name == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="max" if higher_is_better else "min",
                                       factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE)
    raise ValueError(f"unknown lr_schedule {name!r} (valid: {', '.join(SCHEDULES)})")


def class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """N / (C x n_c): inverse class frequency, mean weight 1 over the training samples."""
    counts = torch.bincount(labels, minlength=classes).clamp(min=1).float()
    return len(labels) / (classes * counts)


def per_sample_loss(name: str, weights: torch.Tensor | None
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy, class-weighted cross-entropy or focal loss, one value per sample."""
    functional = nn.functional
    if name == "ce":
        return lambda logits, y: functional.cross_entropy(logits, y, reduction="none")
    if name == "class_weighted_ce":
        return lambda logits, y: functional.cross_entropy(
            logits, y, weight=weights.to(logits.device, logits.dtype), reduction="none")
    if name == "focal":
        def focal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            ce = functional.cross_entropy(logits.float(), y, reduction="none")
            return (1 - torch.exp(-ce)) ** FOCAL_GAMMA * ce
        return focal
    raise ValueError(f"unknown loss {name!r} (valid: {', '.join(LOSSES)})")


def batch_loss(per_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               sampling: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean of the per-sample losses; hard_examples (online hard-example mining,
    Shrivastava et al. 2016): mean of the HARD_FRACTION largest, so only the hardest
    samples of each batch are back-propagated."""
    if sampling != "hard_examples":
        return lambda logits, y: per_sample(logits, y).mean()

    def hardest(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = per_sample(logits, y)
        k = max(1, math.ceil(len(losses) * HARD_FRACTION))
        return losses.topk(k).values.mean()

    return hardest


def epoch_order(sampling: str, labels: torch.Tensor, classes: int
                ) -> Callable[[torch.Generator], torch.Tensor] | None:
    """The index order of one epoch: None for a uniform shuffle (BatchStream's own);
    weighted: as many class-balanced draws with replacement (WeightedRandomSampler,
    weight 1 / n_c), so each class is drawn with probability 1 / C."""
    if sampling != "weighted":
        return None
    counts = torch.bincount(labels.cpu(), minlength=classes).clamp(min=1).double()
    weights = (1.0 / counts)[labels.cpu()]

    def order(generator: torch.Generator) -> torch.Tensor:
        sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                        generator=generator)
        return torch.tensor(list(sampler), dtype=torch.long)

    return order


