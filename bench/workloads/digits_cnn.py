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

from bench.measurement.classes import class_report, summary_metrics
from bench.results.schema import ClassReport
from bench.spec.axes import Setting
from bench.units import MAX_EPOCHS
from bench.variants import distillation, pipeline, pruning
from bench.variants.parallel import parallelize
from bench.variants.precision import get_precision
from bench.workloads import register
from bench.workloads._recipes import (
    Schedule,
    batch_loss,
    build_optimizer,
    class_weights,
    epoch_order,
    per_sample_loss,
    recipe_axes,
)
from bench.workloads._training import (
    BatchStream,
    Trainer,
    predict,
    sum_over_batches,
    train_epochs,
)
from bench.workloads.base import (
    ROTATING_INPUTS,
    EvaluatedTraining,
    Outcome,
    Phase,
    RunContext,
    VariantInferPhase,
    Workload,
    parallel_axes,
    serving_axes,
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
    def __init__(self, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        hidden: list[nn.Module] = [nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU()]
        if dropout > 0:  # only then: the model without dropout is the one it always was
            hidden.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*hidden, nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


CLASSES = 10
# The minority classes of an imbalanced training split (axis imbalance), and the classes
# whose mean recall is reported as minority_recall in every training case.
MINORITY_CLASSES = (3, 5, 8)


def tensors(device: str) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a).to(device) for a in load_split())


def imbalanced(x: torch.Tensor, y: torch.Tensor, ratio: float) -> tuple[torch.Tensor, ...]:
    """The training split with each minority class cut to ``ratio`` of its images (at least
    one), chosen once with the split's seed: the same split for every seed of a case."""
    if ratio >= 1:
        return x, y
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    keep = torch.ones(len(y), dtype=torch.bool)
    for c in MINORITY_CLASSES:
        members = (y.cpu() == c).nonzero().flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        keep[order[max(1, math.ceil(len(members) * ratio)):]] = False
    keep = keep.to(x.device)
    return x[keep], y[keep]


def build_trainer(x: torch.Tensor, y: torch.Tensor, batch_size: int, accum_steps: int,
                  lr: float, width: int, ctx: RunContext, seed: int) -> Trainer:
    """The fixed recipe of the served model (inference phase): Adam, constant LR, CE."""
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


LABELS = tuple(str(c) for c in range(CLASSES))


class DigitsTrain(EvaluatedTraining):
    step_description = "one optimizer step: accum_steps micro-batches of batch_size " \
                       "(forward, loss, backward), optional gradient clipping, the " \
                       "optimizer, the LR schedule"

    def __init__(self, case, ctx: RunContext) -> None:
        self.case, self.ctx = case, ctx
        x_train, y_train, self.x_val, self.y_val = tensors(ctx.device)
        self.x_train, self.y_train = imbalanced(x_train, y_train, case.axes["imbalance"])
        self.weights = class_weights(self.y_train.cpu(), CLASSES)
        self.trainer = self._trainer(seed=ctx.seed + 1, keep_losses=case.training is not None)
        self.samples_per_step = self.trainer.samples_per_step
        self.steps_per_epoch = max(1, self.trainer.stream.batches_per_epoch
                                   // case.axes["accum_steps"])
        self.last_train_loss = math.nan

    def _trainer(self, seed: int, keep_losses: bool = False) -> Trainer:
        a, p = self.case.axes, self.case.params
        torch.manual_seed(seed)
        model = DigitsCNN(p["width"], a["dropout"]).to(self.ctx.device)
        model = parallelize(model, self.ctx.ranks, self.ctx.device)
        optimizer = build_optimizer(a["optimizer"], model.parameters(), a["lr"],
                                    a["weight_decay"])
        stream = BatchStream(self.x_train, self.y_train, a["batch_size"], seed,
                             epoch_order(a["sampling"], self.y_train, CLASSES),
                             shard=self.ctx.ranks.data_shard)
        per_epoch = max(1, stream.batches_per_epoch // a["accum_steps"])
        schedule = Schedule(a["lr_schedule"], optimizer, p["epochs"] * per_epoch, per_epoch,
                            a["lr"])
        loss = batch_loss(per_sample_loss(a["loss"], self.weights), a["sampling"])
        return Trainer(model, optimizer, loss, stream, a["accum_steps"], self.ctx.precision,
                       self.ctx.device, schedule, a["grad_clip"], keep_losses)

    def step(self) -> object:
        return self.trainer.step()

    def _validate(self, model: nn.Module) -> tuple[dict[str, float], ClassReport]:
        logits = predict(model, self.x_val, EVAL_BATCH, self.ctx.precision,
                         self.ctx.device).float()
        predicted = logits.argmax(1)
        report = class_report(self.y_val.cpu().numpy(), predicted.cpu().numpy(), LABELS)
        metrics = {"val_accuracy": float((predicted == self.y_val).float().mean()),
                   "val_loss": float(nn.functional.cross_entropy(logits, self.y_val)),
                   **summary_metrics(report, MINORITY_CLASSES)}
        return metrics, report

    def evaluate(self) -> dict[str, float]:
        metrics, _ = self._validate(self.trainer.model)
        self.trainer.scheduler.after_eval(metrics["val_accuracy"])
        return metrics

    def mean_train_loss(self) -> float:
        self.last_train_loss = self.trainer.mean_loss()
        return self.last_train_loss

    def _details(self, trainer: Trainer) -> dict[str, object]:
        counts = torch.bincount(self.y_train.cpu(), minlength=CLASSES).tolist()
        return {"first_nonfinite_step": trainer.first_nonfinite_step,
                "optimizer_steps": trainer.steps, "n_train": len(self.x_train),
                "n_val": len(self.x_val), "train_class_counts": counts,
                "minority_classes": list(MINORITY_CLASSES),
                "lr_schedule": trainer.scheduler.describe(),
                "trainable_parameters": sum(p.numel() for p in trainer.model.parameters()
                                            if p.requires_grad)}

    def run_outcome(self, final: dict[str, float]) -> Outcome:
        _, report = self._validate(self.trainer.model)
        return Outcome(metrics={**final, "final_train_loss": self.last_train_loss},
                       details=self._details(self.trainer), classes=report)

    def finish(self) -> Outcome:
        # A fresh seeded model trained for exactly the configured epochs: the timed steps
        # never change the reported accuracy.
        trainer = self._trainer(seed=self.ctx.seed + 2)
        curve = train_epochs(trainer, self.case.params["epochs"])
        metrics, report = self._validate(trainer.model)
        return Outcome(
            metrics={**metrics, "final_train_loss": curve[-1]},
            details={**self._details(trainer), "epochs": self.case.params["epochs"],
                     "train_loss_per_epoch": curve},
            classes=report,
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
        batch = case.batch_size
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
        predicted = torch.cat([self.variant.infer(batch).argmax(1)
                               for batch in self.eval_batches])
        truth = self.y_val.cpu()
        correct = int((predicted == truth).sum())
        details = {"train_epochs_fp32": self.case.params["epochs"],
                   "train_loss_per_epoch": self.train_curve, "n_val": len(self.x_val),
                   "teacher_val_accuracy": self.teacher_accuracy}
        if hasattr(self, "student_curve"):
            details["distillation"] = {
                "method": distillation.method(), "student_width": self.case.params["student_width"],
                "teacher_width": self.case.params["width"],
                "student_loss_per_epoch": self.student_curve}
        return Outcome(metrics={"val_accuracy": correct / len(self.x_val)}, details=details,
                       model=self.variant.finalize(),
                       classes=class_report(truth.numpy(), predicted.numpy(), LABELS))


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
            "epochs": Setting("epochs", int, 8, minimum=1, maximum=MAX_EPOCHS,
                              help="planned training epochs (train: the LR schedule's horizon)"),
            "lr": Setting("lr", float, 2e-3, minimum=0, phases=("infer",),
                          help="Adam's LR for the served model (train: the lr axis)"),
            "width": Setting("width", int, 32, minimum=1, help="channels of the first conv"),
            "student_width": Setting("student_width", int, 8, minimum=1, phases=("infer",),
                                     help="channels of the distilled student's first conv"),
        }

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        return {**super().axes(), **pipeline.variant_axes(), "distillation": distillation.AXIS,
                **recipe_axes("adam", 2e-3, classification=True),
                "imbalance": Setting("imbalance", float, 1.0, minimum=0, above_minimum=True,
                                     maximum=1.0, phases=("train",),
                                     help="each minority class's share of its training "
                                          f"images {MINORITY_CLASSES}: 1 balanced, 0.1 1:10"),
                **parallel_axes(), **serving_axes()}

    @classmethod
    def unsupported_reason(cls, case) -> str | None:
        if case.phase != "infer":
            return None
        return pipeline.unsupported_reason(case.axes, case.device, cls.support)

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        if phase == "train":
            return ("val_accuracy", "final_train_loss", *cls.eval_metrics(phase))
        return ("val_accuracy",)

    @classmethod
    def eval_metrics(cls, phase: str) -> dict[str, bool]:
        if phase != "train":
            return {}
        return {"val_accuracy": True, "balanced_accuracy": True, "macro_f1": True,
                "minority_recall": True, "val_loss": False}

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        return ("val_accuracy", True)

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        return DigitsTrain(case, ctx) if case.phase == "train" else DigitsInfer(case, ctx)
