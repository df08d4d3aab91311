"""What a user's model factory returns: the public description of *your* model.

A suite names a factory instead of a built-in workload::

    [[benchmark]]
    model = "mymodels:build"          # module:function, found on python_path
    python_path = "."                 # optional, relative to the suite file (default: its folder)
    matrix = { precision = ["fp32", "bf16"], backend = ["eager", "onnxruntime"],
               quantization = ["none", "int8_dynamic"], batch_size = [1, 32] }

and ``mymodels.py`` holds::

    import torch
    from bench import UserModel

    def build() -> UserModel:
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 10))
        return UserModel(model, make_inputs=lambda batch, seed: (
            torch.randn(batch, 64, generator=torch.Generator().manual_seed(seed)),))

The factory runs only inside the isolated worker, once per case. Every variant axis
(precision, backend, quantization, pruning) applies to ``model``; a combination that cannot
work on it is that case's ``error`` with the tool's message, and the sweep goes on.

Accuracy: with ``evaluate`` the case reports your metrics and parity on ``task_metric``;
without it, each variant reports output fidelity against the fp32 eager model on held-out
inputs (cosine per output row, max abs difference, top-1 agreement when the output is a
score per class) and parity is computed on the mean cosine.

This module imports no torch: the parent reads it when it loads a suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    Inputs = tuple[torch.Tensor, ...]


@dataclass
class UserModel:
    """Your model and how to feed it.

    - ``model``: the trained fp32 module (put in eval mode and on the case's device by bench).
    - ``make_inputs(batch_size, seed)``: one batch of inputs as a tuple of tensors, different
      for each seed (timed steps rotate through several; accuracy uses other seeds). When
      the suite's matrix sets ``seq_len``, it is passed too: ``make_inputs(batch, seed,
      seq_len=...)``.
    - ``input_names``, ``output_name``, ``dynamic_axes``: for the ONNX export (default: the
      batch dimension 0 of every input and of the output is dynamic).
    - ``calibration``: batches for static int8 (default: 8 batches of 32 from
      ``make_inputs`` with seeds never timed or evaluated).
    - ``evaluate(predict) -> {metric: value}``: your task metrics; ``predict(inputs)`` runs
      the variant being measured (the very step that is timed) and returns its output as
      float32 on the CPU. Name the one parity compares in ``task_metric`` with whether
      higher is better.
    - ``output``: picks the tensor to compare from what ``model`` returns (default: a tensor
      as is; a tuple's first item; a mapping's ``logits``, else its first tensor).
    - ``sample_unit``: what ``batch_size`` counts (throughput is per this unit).
    - ``held_out``: the batches fidelity (and the ONNX export check) runs on (default:
      ``FIDELITY_BATCHES`` batches from ``make_inputs`` with seeds never timed).
    - ``structured_pruning(model, amount) -> str``: how to remove ``amount`` of the model's
      whole units (heads, channels) in place, saying what it did; enables the
      ``structured-NN`` pruning values.
    - ``int8_static_ops``: the ONNX op types static int8 quantizes (default: all it can;
      transformers keep softmax, layernorm and residual adds in float).
    - ``details``: anything worth keeping in each case's record (model files, data sizes).

    For ``phase = "train"`` (optional): ``train_batch(batch_size, seed) -> (inputs, targets)``
    and ``loss(outputs, targets) -> scalar tensor``; ``optimizer(parameters)`` builds the
    optimizer (default ``torch.optim.AdamW(lr=1e-3)``). Each timed step is one optimizer
    step over ``accum_steps`` micro-batches, under the case's precision (autocast; loss
    scaling for fp16).
    """

    model: nn.Module
    make_inputs: Callable[..., Inputs]
    input_names: tuple[str, ...] | None = None
    output_name: str = "output"
    dynamic_axes: dict[str, dict[int, str]] | None = None
    calibration: list[Inputs] | None = None
    evaluate: Callable[[Callable[[Inputs], torch.Tensor]], dict[str, float]] | None = None
    task_metric: tuple[str, bool] | None = None
    output: Callable[[Any], torch.Tensor] | None = None
    sample_unit: str = "samples"
    held_out: list[Inputs] | None = None
    structured_pruning: Callable[[nn.Module, float], str] | None = None
    int8_static_ops: tuple[str, ...] | None = None
    details: dict[str, Any] | None = None
    train_batch: Callable[[int, int], tuple[Any, torch.Tensor]] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    optimizer: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if not callable(self.make_inputs):
            raise TypeError("UserModel.make_inputs must be callable: (batch_size, seed) -> "
                            "tuple of tensors")
        if self.evaluate is not None and self.task_metric is None:
            raise TypeError("UserModel.evaluate needs task_metric=(name, higher_is_better): "
                            "the metric accuracy parity compares")
