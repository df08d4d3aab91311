"""linreg: the classic y = 2x + noise linear regression, trained by gradient descent.

Methods: full-batch gradient descent (one step per epoch over all training points),
SGD (one point per step) and mini-batch GD (``batch_size`` points per step).
Schedules: constant LR, or linear warm-up then linear decay to zero. Joins the
time-to-accuracy mode with ``target = { val_mse = ... }``.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.spec.axes import Setting
from bench.units import MAX_EPOCHS
from bench.workloads import register
from bench.workloads._recipes import Schedule
from bench.workloads._training import BatchStream, Trainer, train_epochs
from bench.workloads.base import EvaluatedTraining, Outcome, Phase, RunContext, Workload

TRUE_SLOPE = 2.0
TRUE_INTERCEPT = 0.0
# The data are the same for every seed of a case; a seed changes initialization and order.
DATA_SEED = 0


def make_data(n_train: int, n_val: int, noise: float, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_val, 1, generator=gen) * 2 - 1
    y = TRUE_SLOPE * x + TRUE_INTERCEPT + noise * torch.randn(n_train + n_val, 1, generator=gen)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class LinregTrain(EvaluatedTraining):
    step_description = "one optimizer step (accum_steps micro-batches, forward+backward, " \
                       "SGD update, LR schedule)"

    def __init__(self, case, ctx: RunContext) -> None:
        self.case, self.ctx = case, ctx
        p = case.params
        x, y, self.x_val, self.y_val = (
            t.to(ctx.device) for t in make_data(p["n_train"], p["n_val"], p["noise"], DATA_SEED))
        self.x_train, self.y_train = x, y
        self.batch_size = {"full_batch": len(x), "sgd": 1}.get(case.axes["method"],
                                                               case.batch_size)
        self.trainer = self._make_trainer(seed=ctx.seed + 1,
                                          keep_losses=case.training is not None)
        self.samples_per_step = self.trainer.samples_per_step
        self.steps_per_epoch = max(1, self.trainer.stream.batches_per_epoch
                                   // case.axes["accum_steps"])
        self.last_train_loss = float("nan")

    def _make_trainer(self, seed: int, keep_losses: bool = False) -> Trainer:
        torch.manual_seed(seed)
        model = nn.Linear(1, 1).to(self.ctx.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.case.axes["lr"])
        stream = BatchStream(self.x_train, self.y_train, self.batch_size, seed)
        accum = self.case.axes["accum_steps"]
        per_epoch = max(1, stream.batches_per_epoch // accum)
        schedule = Schedule(self.case.axes["lr_schedule"], optimizer,
                            self.case.params["epochs"] * per_epoch, per_epoch,
                            self.case.axes["lr"], higher_is_better=False)
        return Trainer(model, optimizer, nn.functional.mse_loss, stream, accum,
                       self.ctx.precision, self.ctx.device, schedule, keep_losses=keep_losses)

    def step(self) -> object:
        return self.trainer.step()

    def _val_mse(self, model: nn.Module) -> float:
        model.eval()
        with torch.inference_mode(), self.ctx.precision.context(self.ctx.device):
            return float(nn.functional.mse_loss(model(self.x_val).float(), self.y_val))

    def evaluate(self) -> dict[str, float]:
        mse = self._val_mse(self.trainer.model)
        self.trainer.scheduler.after_eval(mse)
        return {"val_mse": mse}

    def mean_train_loss(self) -> float:
        self.last_train_loss = self.trainer.mean_loss()
        return self.last_train_loss

    def _fitted(self, model: nn.Module) -> dict[str, float]:
        return {"slope": float(model.weight.item()), "intercept": float(model.bias.item())}

    def run_outcome(self, final: dict[str, float]) -> Outcome:
        return Outcome(metrics={**final, **self._fitted(self.trainer.model)},
                       details={"optimizer_steps": self.trainer.steps,
                                "effective_batch_size": self.batch_size,
                                "final_train_loss": self.last_train_loss,
                                "true_slope": TRUE_SLOPE, "noise_std": self.case.params["noise"]})

    def finish(self) -> Outcome:
        # Accuracy comes from a fresh seeded model trained for exactly the configured
        # epochs, so the timed steps above (however many the sampler took) never
        # change the reported metrics.
        trainer = self._make_trainer(seed=self.ctx.seed + 2)
        epochs = self.case.params["epochs"]
        curve = train_epochs(trainer, epochs)
        return Outcome(
            metrics={"val_mse": self._val_mse(trainer.model), **self._fitted(trainer.model)},
            details={"first_nonfinite_step": trainer.first_nonfinite_step,
                     "epochs": epochs, "optimizer_steps": trainer.steps,
                     "effective_batch_size": self.batch_size, "train_loss_per_epoch": curve,
                     "true_slope": TRUE_SLOPE, "noise_std": self.case.params["noise"]},
        )


@register
class Linreg(Workload):
    name = "linreg"
    description = "y = 2x + noise, one linear unit trained by full-batch GD, SGD or mini-batch GD"
    phases = ("train",)

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        axes = super().axes()
        axes["method"] = Setting("method", str, "minibatch",
                                 choices=("full_batch", "sgd", "minibatch"),
                                 help="full_batch and sgd ignore batch_size")
        axes["lr_schedule"] = Setting("lr_schedule", str, "constant",
                                      choices=("constant", "warmup_linear"))
        axes["lr"] = Setting("lr", float, 0.5, minimum=0, above_minimum=True,
                             help="SGD's learning rate")
        axes["early_stopping"] = Setting("early_stopping", int, 0, minimum=0,
                                         help="patience in evaluations (0: off; evaluated "
                                              "runs)")
        return axes

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {
            "epochs": Setting("epochs", int, 30, minimum=1, maximum=MAX_EPOCHS),
            "n_train": Setting("n_train", int, 256, minimum=2),
            "n_val": Setting("n_val", int, 256, minimum=1),
            "noise": Setting("noise", float, 0.1, minimum=0),
        }

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        return ("val_mse", "slope", "intercept")

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        return ("val_mse", False)

    @classmethod
    def eval_metrics(cls, phase: str) -> dict[str, bool]:
        return {"val_mse": False}

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        return LinregTrain(case, ctx)
