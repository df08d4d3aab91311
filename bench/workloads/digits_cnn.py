"""digits_cnn: a small CNN on scikit-learn's bundled 8x8 handwritten digits.

Fixed seeded split: 1437 training and 360 validation images (80/20). No batch norm or
dropout, so k accumulated micro-batches give exactly the gradients of one k-times
larger batch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from bench.spec.axes import Setting
from bench.variants import distillation, pipeline, pruning
from bench.variants.precision import get_precision
from bench.workloads import register
from bench.workloads._training import BatchStream, Trainer, sum_over_batches, train_epochs
from bench.workloads.base import (
    ROTATING_INPUTS,
    Outcome,
    Phase,
    RunContext,
    VariantInferPhase,
    Workload,
)

SPLIT_SEED = 1234
VAL_FRACTION = 0.2


@functools.cache
def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val): images scaled to [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits  # scikit-learn (~1 s) when the data is read

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_val = math.ceil(len(x) * VAL_FRACTION)
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tensors(device: str) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a).to(device) for a in load_split())


def build_trainer(x: torch.Tensor, y: torch.Tensor, batch_size: int, accum_steps: int,
                  lr: float, width: int, ctx: RunContext, seed: int) -> Trainer:
    torch.manual_seed(seed)
    model = DigitsCNN(width).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    stream = BatchStream(x, y, batch_size, seed)
    return Trainer(model, optimizer, nn.functional.cross_entropy, stream, accum_steps,
                   ctx.precision, ctx.device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             ctx: RunContext) -> float:
    correct = sum_over_batches(model, x, y, batch_size, ctx.precision, ctx.device,
                               lambda logits, labels: int((logits.argmax(1) == labels).sum()))
    return correct / len(x)


class DigitsTrain(Phase):
    step_description = "one optimizer step: accum_steps micro-batches of batch_size " \
                       "(forward, cross-entropy, backward), then Adam"

    def __init__(self, case, ctx: RunContext) -> None:
        self.case, self.ctx = case, ctx
        self.x_train, self.y_train, self.x_val, self.y_val = tensors(ctx.device)
        self.trainer = self._trainer(seed=ctx.seed + 1)
        self.samples_per_step = self.trainer.samples_per_step

    def _trainer(self, seed: int) -> Trainer:
        a, p = self.case.axes, self.case.params
        return build_trainer(self.x_train, self.y_train, a["batch_size"], a["accum_steps"],
                             p["lr"], p["width"], self.ctx, seed)

    def step(self) -> object:
        return self.trainer.step()

    def finish(self) -> Outcome:
        # A fresh seeded model trained for exactly the configured epochs: the timed steps
        # never change the reported accuracy.
        trainer = self._trainer(seed=self.ctx.seed + 2)
        curve = train_epochs(trainer, self.case.params["epochs"])
        val_acc = accuracy(trainer.model, self.x_val, self.y_val, 256, self.ctx)
        return Outcome(
            metrics={"val_accuracy": val_acc, "final_train_loss": curve[-1]},
            details={"first_nonfinite_step": trainer.first_nonfinite_step,
                     "epochs": self.case.params["epochs"], "optimizer_steps": trainer.steps,
                     "train_loss_per_epoch": curve, "n_train": len(self.x_train),
                     "n_val": len(self.x_val)},
        )


EVAL_BATCH = 120  # the 360 validation images in three fixed-shape batches


class DigitsInfer(VariantInferPhase):
    step_description = "one forward pass over a batch of batch_size validation images; " \
                       "torch.inference_mode and precision entered once around all steps; " \
                       f"batches rotate through {ROTATING_INPUTS} distinct inputs"

    def __init__(self, case, ctx: RunContext) -> None:
        self.case, self.ctx = case, ctx
        p = case.params
        self.x_train, self.y_train, self.x_val, self.y_val = tensors(ctx.device)
        # The served model is trained once in fp32, as users deploy a trained checkpoint;
        # the case's variant axes apply to inference only.
        self.fp32 = RunContext(ctx.device, get_precision("fp32"), ctx.seed)
        trainer = build_trainer(self.x_train, self.y_train, 64, 1, p["lr"], p["width"],
                                self.fp32, ctx.seed + 1)
        self.train_curve = train_epochs(trainer, p["epochs"])
        self.teacher = trainer.model.eval()
        self.teacher_accuracy = accuracy(self.teacher, self.x_val, self.y_val, EVAL_BATCH,
                                         self.fp32)
        model = self.teacher
        if case.axes.get("distillation", "none") == "student":
            model = self._distil()
        self.eval_batches = [(self.x_val[i:i + EVAL_BATCH],)
                             for i in range(0, len(self.x_val), EVAL_BATCH)]
        calibration = [(self.x_train[i:i + 32],) for i in range(0, 8 * 32, 32)]
        adapter = pipeline.ModelAdapter(
            model=model, input_names=("images",), output_name="logits",
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            check_inputs=self.eval_batches, calibration=calibration,
            structured_pruner=pruning.conv_channels)
        self.variant = pipeline.build_variant(adapter, case.axes, ctx.device)
        batch = case.axes["batch_size"]
        reps = -(-ROTATING_INPUTS * batch // len(self.x_val))
        pool = self.x_val.repeat(reps, 1, 1, 1)
        self.rotate([(pool[i * batch:(i + 1) * batch].contiguous(),)
                     for i in range(ROTATING_INPUTS)])
        self.samples_per_step = batch

    def _distil(self) -> nn.Module:
        p = self.case.params
        with torch.inference_mode():
            teacher_logits = torch.cat([self.teacher(self.x_train[i:i + 256])
                                        for i in range(0, len(self.x_train), 256)])
        targets = distillation.soft_targets(self.y_train, teacher_logits)
        torch.manual_seed(self.ctx.seed + 3)
        student = DigitsCNN(p["student_width"]).to(self.ctx.device)
        trainer = Trainer(student, torch.optim.Adam(student.parameters(), lr=p["lr"]),
                          distillation.distillation_loss,
                          BatchStream(self.x_train, targets, 64, self.ctx.seed + 3), 1,
                          self.fp32.precision, self.ctx.device)
        self.student_curve = train_epochs(trainer, p["epochs"])
        return student.eval()

    def finish(self) -> Outcome:
        correct = 0
        for (images,), start in zip(self.eval_batches, range(0, len(self.x_val), EVAL_BATCH),
                                    strict=True):
            logits = self.variant.infer((images,))
            correct += int((logits.argmax(1) == self.y_val[start:start + EVAL_BATCH].cpu()).sum())
        details = {"train_epochs_fp32": self.case.params["epochs"],
                   "train_loss_per_epoch": self.train_curve, "n_val": len(self.x_val),
                   "teacher_val_accuracy": self.teacher_accuracy}
        if hasattr(self, "student_curve"):
            details["distillation"] = {
                "method": distillation.method(), "student_width": self.case.params["student_width"],
                "teacher_width": self.case.params["width"],
                "student_loss_per_epoch": self.student_curve}
        return Outcome(metrics={"val_accuracy": correct / len(self.x_val)}, details=details,
                       model=self.variant.finalize())


@register
class DigitsCnn(Workload):
    name = "digits_cnn"
    smoke_params = {"epochs": 1, "width": 8, "student_width": 4}
    warm_imports = ("sklearn.datasets",)
    description = "two-conv CNN on scikit-learn's 8x8 digits (1437 train / 360 val)"
    phases = ("train", "infer")
    support = pipeline.VariantSupport(structured_pruning="conv output channels",
                                      torch_static_int8=None)

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {
            "epochs": Setting("epochs", int, 8, minimum=1),
            "lr": Setting("lr", float, 2e-3, minimum=0),
            "width": Setting("width", int, 32, minimum=1, help="channels of the first conv"),
            "student_width": Setting("student_width", int, 8, minimum=1, phases=("infer",),
                                     help="channels of the distilled student's first conv"),
        }

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        return {**super().axes(), **pipeline.variant_axes(), "distillation": distillation.AXIS}

    @classmethod
    def unsupported_reason(cls, case) -> str | None:
        if case.phase != "infer":
            return None
        return pipeline.unsupported_reason(case.axes, case.device, cls.support)

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        return ("val_accuracy", "final_train_loss") if phase == "train" else ("val_accuracy",)

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        return ("val_accuracy", True)

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        return DigitsTrain(case, ctx) if case.phase == "train" else DigitsInfer(case, ctx)
