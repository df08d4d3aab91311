"""model: the user's own PyTorch model, from a factory named in the suite.

``model = "mymodels:build"`` in a ``[[benchmark]]`` table (the loader turns it into this
workload with ``params.factory``) names a function returning a ``bench.UserModel``. Inside the
worker the factory's module is imported (``params.python_path`` first on ``sys.path``), the
model goes through the same variant pipeline as the built-in workloads (prune, int8, cast,
eager / compile / ONNX Runtime), and each timed step is one forward pass over a batch from
the user's ``make_inputs``, rotating through ``ROTATING_INPUTS`` distinct batches.

Accuracy after timing: output fidelity of the variant against the fp32 eager model on
``FIDELITY_BATCHES`` held-out batches (seeds never timed), and the user's ``evaluate`` if given.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import itertools
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.spec.axes import Setting
from bench.user import UserModel
from bench.variants import pipeline
from bench.workloads import register
from bench.workloads._training import accumulate_gradients
from bench.workloads.base import (
    ROTATING_INPUTS,
    Outcome,
    Phase,
    RunContext,
    VariantInferPhase,
    Workload,
    serving_axes,
)
from bench.workloads.hf import TASKS, checkpoint_model

# Held-out batches for fidelity (and the ONNX export check), and the default calibration
# set for static int8: seeds far from the timed ones (0 .. ROTATING_INPUTS - 1).
FIDELITY_BATCHES, FIDELITY_BATCH, FIDELITY_SEED = 4, 16, 10_000
CALIBRATION_BATCHES, CALIBRATION_BATCH, CALIBRATION_SEED = 8, 32, 20_000


def resolve_factory(path: str, python_path: str | None) -> Callable[[], Any]:
    """``module:function`` -> the function, its module imported with ``python_path`` first."""
    module_name, _, attribute = path.partition(":")
    if python_path and python_path not in sys.path:
        sys.path.insert(0, python_path)
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def build_user_model(factory: str, python_path: str | None) -> UserModel:
    made = resolve_factory(factory, python_path)()
    if not isinstance(made, UserModel):
        raise TypeError(f"{factory}() returned {type(made).__name__}, not bench.UserModel")
    return made


def as_inputs(made: Any, device: str) -> tuple[torch.Tensor, ...]:
    """What a user's make_inputs, train_batch or evaluate hands over (one tensor or a
    sequence of them) as the input tuple the model is called with, on ``device``."""
    made = (made,) if isinstance(made, torch.Tensor) else tuple(made)
    return tuple(t.to(device) for t in made)


def pick_output(output: Any) -> torch.Tensor:
    """The tensor to compare: a tensor as is; a tuple's first item; a mapping's ``logits``
    (Hugging Face outputs), else its first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "keys"):
        if "logits" in output:
            return output["logits"]
        output = list(output.values())
    if isinstance(output, list | tuple) and output:
        return pick_output(output[0])
    raise TypeError(f"the model returned {type(output).__name__}: give UserModel(output=...) "
                    "to pick the tensor to compare")


class SingleOutput(nn.Module):
    """The user's model with one tensor out (what export, quantizers and fidelity need)."""

    def __init__(self, model: nn.Module, picker: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.picker = picker

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.picker(self.model(*inputs))


def fidelity(outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """The variant's outputs against the fp32 eager ones, row by row."""
    got, want = outputs.float().flatten(1), reference.float().flatten(1)
    cos = nn.functional.cosine_similarity(got, want, dim=1)
    metrics = {"fidelity_mean_cos": float(cos.mean()), "fidelity_min_cos": float(cos.min()),
               "fidelity_max_abs_diff": float((got - want).abs().max())}
    if reference.dim() == 2 and reference.shape[1] > 1:  # a score per class: top-1 agreement
        metrics["fidelity_top1_agreement"] = float(
            (outputs.argmax(1) == reference.argmax(1)).float().mean())
    return metrics


def user_model_for(case) -> tuple[UserModel, str]:  # noqa: ANN001 - a CaseSpec
    """The case's UserModel (from its factory, or its local Hugging Face checkpoint) and
    what it is, in words."""
    p = case.params
    if p.get("hf"):
        return checkpoint_model(p["hf"], p["task"]), f"the {p['task']} checkpoint {p['hf']}"
    return build_user_model(p["factory"], p["python_path"] or None), p["factory"]


class UserModelInfer(VariantInferPhase):
    def __init__(self, case, ctx: RunContext, user: UserModel, what: str) -> None:
        self.case, self.ctx = case, ctx
        self.user, self.what = user, what
        picker = self.user.output or pick_output
        self.reference_model = SingleOutput(self.user.model, picker).to(ctx.device).eval()
        self.held_out = [self._on_device(b) for b in self.user.held_out or [
            self.inputs(FIDELITY_BATCH, FIDELITY_SEED + i) for i in range(FIDELITY_BATCHES)]]
        self.variant = pipeline.build_variant(self._adapter(), case.axes, ctx.device)
        batch = case.batch_size
        self.timed_batches = [self.inputs(batch, seed) for seed in range(ROTATING_INPUTS)]
        self.rotate(self.timed_batches)
        self.samples_per_step = batch
        self.sample_unit = self.user.sample_unit
        self.step_description = (
            f"one forward pass of {what} over batch_size inputs from its make_inputs; "
            "inference_mode and precision entered once around all steps; batches rotate "
            f"through {ROTATING_INPUTS} distinct inputs")

    def inputs(self, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
        kwargs = {"seq_len": self.case.axes["seq_len"]} if self.case.axes.get("seq_len") else {}
        return self._on_device(self.user.make_inputs(batch, seed, **kwargs))

    def _on_device(self, made: Any) -> tuple[torch.Tensor, ...]:
        return as_inputs(made, self.ctx.device)

    def _adapter(self) -> pipeline.ModelAdapter:
        user = self.user
        names = user.input_names or tuple(
            list(inspect.signature(user.model.forward).parameters)[:len(self.held_out[0])])
        dynamic = user.dynamic_axes or {**{n: {0: "batch"} for n in names},
                                        user.output_name: {0: "batch"}}
        calibration = user.calibration or [self.inputs(CALIBRATION_BATCH, CALIBRATION_SEED + i)
                                           for i in range(CALIBRATION_BATCHES)]
        return pipeline.ModelAdapter(
            model=self.reference_model, input_names=tuple(names), output_name=user.output_name,
            dynamic_axes=dynamic, check_inputs=self.held_out,
            calibration=[self._on_device(b) for b in calibration],
            structured_pruner=user.structured_pruning, onnx_static_op_types=user.int8_static_ops)

    def _predict(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The user's evaluate runs the timed step of the variant on its own inputs."""
        return self.variant.infer(as_inputs(inputs, self.ctx.device))

    def finish(self) -> Outcome:
        metrics: dict[str, float] = {}
        task_metric = ("fidelity_mean_cos", True)
        if self.user.evaluate is not None:
            metrics = {k: float(v) for k, v in self.user.evaluate(self._predict).items()}
            task_metric = self.user.task_metric
        if "fidelity_mean_cos" not in metrics:  # an evaluate may measure fidelity its own way
            with torch.inference_mode():
                reference = torch.cat([self.reference_model(*b).float().cpu()
                                       for b in self.held_out])
            outputs = torch.cat([self.variant.infer(b) for b in self.held_out])
            metrics = {**fidelity(outputs, reference), **metrics}
        return Outcome(metrics=metrics, task_metric=task_metric,
                       details={"model": self.what,
                                "fidelity_batches": [list(b[0].shape) for b in self.held_out],
                                **(self.user.details or {})},
                       model=self.variant.finalize())


# Distinct micro-batches a timed training step rotates through (made before timing).
TRAIN_BATCHES = 16
DEFAULT_LR = 1e-3


class UserModelTrain(Phase):
    """One optimizer step of the user's model per timed step: ``accum_steps`` micro-batches
    from its ``train_batch``, forward and backward under the case's precision, then the
    optimizer's step."""

    def __init__(self, case, ctx: RunContext, user: UserModel, what: str) -> None:
        if user.train_batch is None or user.loss is None:
            raise ValueError(f"{what} has no training recipe: give UserModel train_batch= "
                             "and loss= to benchmark phase = \"train\"")
        self.case, self.ctx, self.user = case, ctx, user
        torch.manual_seed(ctx.seed)
        self.model = user.model.to(ctx.device).train()
        picker = user.output or pick_output
        self.module = SingleOutput(self.model, picker)
        ctx.precision.prepare_model(self.model)
        make = user.optimizer or (lambda params: torch.optim.AdamW(params, lr=DEFAULT_LR))
        self.optimizer = make(self.model.parameters())
        batch = case.batch_size
        self.batches = [self._on_device(*user.train_batch(batch, seed))
                        for seed in range(TRAIN_BATCHES)]
        self._next = itertools.cycle(self.batches)
        self.scaler = torch.amp.GradScaler(ctx.device, enabled=ctx.precision.name == "fp16")
        self.accum = case.axes.get("accum_steps", 1)
        self.samples_per_step = batch * self.accum
        self.sample_unit = user.sample_unit
        self.losses: list[torch.Tensor] = []
        self.step_description = (
            f"one optimizer step of {what}: {self.accum} micro-batch(es) of batch_size from "
            "its train_batch, forward + loss + backward under the case's precision, then "
            f"{type(self.optimizer).__name__}.step(); micro-batches rotate through "
            f"{TRAIN_BATCHES} distinct ones")

    def _on_device(self, inputs: Any, targets: torch.Tensor) -> tuple[Any, torch.Tensor]:
        return as_inputs(inputs, self.ctx.device), targets.to(self.ctx.device)

    def step(self) -> object:
        micro = [next(self._next) for _ in range(self.accum)]
        loss = accumulate_gradients(self.module, self.user.loss, micro, self.ctx.precision,
                                    self.ctx.device, self.scaler)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss)
        return loss

    def finish(self) -> Outcome:
        last = torch.stack(self.losses[-TRAIN_BATCHES:]).float()
        metrics = {"final_train_loss": float(last.mean())}
        task_metric = ("final_train_loss", False)
        if self.user.evaluate is not None:
            self.model.eval()

            def predict(inputs: Any) -> torch.Tensor:
                with torch.inference_mode(), self.ctx.precision.context(self.ctx.device):
                    return self.module(*as_inputs(inputs, self.ctx.device)).float().cpu()

            metrics.update({k: float(v) for k, v in self.user.evaluate(predict).items()})
            task_metric = self.user.task_metric
        return Outcome(metrics=metrics, task_metric=task_metric,
                       details={"model": self.case.params.get("factory") or
                                self.case.params.get("hf"), "optimizer_steps": len(self.losses),
                                **(self.user.details or {})})


@register
class UserModelWorkload(Workload):
    name = "model"
    description = "your own PyTorch model: model = \"module:function\" returning bench.UserModel"
    phases = ("infer", "train")
    smoke_params = {"factory": "bench.workloads.user_model:tiny_mlp"}

    @classmethod
    def case_extras(cls, case) -> tuple[str, ...]:  # noqa: ANN001 - a CaseSpec
        return ("hf",) if case.params.get("hf") else ()  # checkpoints load with transformers
    # Whether the model has a structured pruning rule is the factory's to say
    # (UserModel.structured_pruning): a case asking for one without it is an error.
    support = pipeline.VariantSupport(structured_pruning="UserModel.structured_pruning",
                                      torch_static_int8=None)

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        return {**super().axes(),
                "seq_len": Setting("seq_len", int, 0, minimum=0,
                                   help="passed to make_inputs as seq_len= when above 0"),
                **pipeline.variant_axes(), **serving_axes()}

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {"factory": Setting("factory", str, "", help="module:function returning "
                                                            "bench.UserModel"),
                "python_path": Setting("python_path", str, "",
                                       help="folder put first on sys.path in the worker"),
                "hf": Setting("hf", str, "", help="a local Hugging Face checkpoint folder "
                                                  "(instead of a factory)"),
                "task": Setting("task", str, TASKS[0], choices=TASKS,
                                help="what the checkpoint is run as")}

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        if phase == "train":
            return ("final_train_loss",)
        return ("fidelity_mean_cos", "fidelity_min_cos", "fidelity_max_abs_diff")

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        return ("final_train_loss", False) if phase == "train" else ("fidelity_mean_cos", True)

    @classmethod
    def unsupported_reason(cls, case) -> str | None:
        return pipeline.unsupported_reason(case.axes, case.device, cls.support)

    @classmethod
    def case_imports(cls, case) -> tuple[str, ...]:
        """The factory's module (a user's, often importing torchvision, transformers or
        scikit-learn: a second or more per worker), from the folder resolve_factory puts
        first on sys.path."""
        factory, folder = case.params.get("factory"), case.params.get("python_path")
        if not factory or not folder:
            return cls.warm_imports
        return (*cls.warm_imports, f"{factory.partition(':')[0]}@{folder}")

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        phase = UserModelTrain if case.phase == "train" else UserModelInfer
        return phase(case, ctx, *user_model_for(case))


@functools.cache
def _tiny_mlp_weights() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def tiny_mlp() -> UserModel:
    """The smallest user model: what ``bench init`` starts from and the contract test runs."""
    def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, 64, generator=torch.Generator().manual_seed(seed)),)

    def train_batch(batch: int, seed: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(batch, 64, generator=generator)
        return (features,), features[:, :10].argmax(1)  # a learnable rule

    return UserModel(copy.deepcopy(_tiny_mlp_weights()), make_inputs, input_names=("features",),
                     output_name="logits", train_batch=train_batch,
                     loss=nn.functional.cross_entropy)
