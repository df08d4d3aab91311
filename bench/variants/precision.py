"""Precision modes: how a step's compute is run, and where each mode exists.

A precision is a registry entry with a context manager wrapped around every
step (autocast or the TF32 switch), a weight cast for the ``*_cast`` modes, and a
reason when a device lacks it.

torch (and torchao) are imported where they are used: the suite planner reads this
registry, and the pytest plugin loads the planner in every pytest session.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.variants import VariantNotApplied


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    autocast_dtype: str | None = None
    tf32: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")
    cuda_check: Callable[[], str | None] | None = None
    cast_dtype: str | None = None  # weights and activations cast (model.to), no autocast
    float8_training: bool = False  # Linear layers swapped for torchao Float8Linear

    def prepare_model(self, model: Any) -> str | None:
        """Apply what autocast cannot: fp8 swaps eligible Linear layers (both dimensions
        multiples of 16, the tied output head excluded) for torchao's Float8Linear with
        dynamic tensorwise scales. Returns what was done, or None."""
        if not self.float8_training:
            return None
        from torch import nn  # torch on use (module docstring)

        logging.getLogger("torchao").setLevel(logging.ERROR)
        from torchao.float8 import convert_to_float8_training  # optional: fp8 only

        def eligible(module: nn.Module, fqn: str) -> bool:
            return isinstance(module, nn.Linear) and "lm_head" not in fqn and \
                module.in_features % 16 == 0 and module.out_features % 16 == 0

        convert_to_float8_training(model, module_filter_fn=eligible)
        swapped = sum(type(m).__name__ == "Float8Linear" for m in model.modules())
        if swapped == 0:
            raise VariantNotApplied("fp8: convert_to_float8_training swapped no Linear (none "
                                    "with both dimensions multiples of 16, lm_head excluded): "
                                    "its figures would be bf16's")
        return f"torchao convert_to_float8_training: {swapped} Linear -> Float8Linear " \
               "(tensorwise dynamic scales, e4m3 forward / e5m2 gradients), bf16 autocast"

    def cast_model(self, model: Any) -> tuple[Any, Callable[[tuple], tuple]]:
        """For a ``*_cast`` precision: the model cast to its dtype, and the function that
        casts a batch's floating inputs alike (outside the timed region). Otherwise the
        model as is and inputs unchanged."""
        if self.cast_dtype is None:
            return model, lambda inputs: inputs
        import torch  # on use (module docstring)

        dtype = getattr(torch, self.cast_dtype)

        def prepare(inputs: tuple) -> tuple:
            return tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)

        return model.to(dtype), prepare

    def unsupported_reason(self, device: str, phase: str = "infer") -> str | None:
        if self.float8_training and phase != "train":
            return "fp8 here is torchao float8 training; fp8 inference is not built"
        if self.cast_dtype is not None and phase == "train":
            return f"precision {self.name} casts the weights for inference; training " \
                   f"uses autocast ({self.name.split('_')[0]})"
        if device not in self.devices:
            return f"precision {self.name} is not available on {device} " \
                   f"(only on {', '.join(self.devices)})"
        if device == "cuda" and self.cuda_check is not None:
            return self.cuda_check()
        return None

    @contextlib.contextmanager
    def context(self, device: str) -> Iterator[None]:
        import torch  # on use (module docstring)

        if device != "cuda":
            if self.autocast_dtype is None:
                yield
            else:
                with torch.autocast(device_type=device, dtype=getattr(torch, self.autocast_dtype)):
                    yield
            return
        # fp32 must mean fp32: cuDNN allows TF32 convolutions by default, so set both
        # switches explicitly for every precision on CUDA.
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        try:
            if self.autocast_dtype is not None:
                with torch.autocast(device_type=device, dtype=getattr(torch, self.autocast_dtype)):
                    yield
            else:
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    def method(self) -> str:
        if self.float8_training:
            return "Linear matmuls in float8 (torchao Float8Linear, torch._scaled_mm), " \
                   "torch.autocast(dtype=torch.bfloat16) for the rest, fp32 master weights"
        if self.tf32:
            return "fp32 tensors, TF32 tensor-core matmul/conv (torch.backends allow_tf32)"
        if self.autocast_dtype:
            return f"torch.autocast(dtype=torch.{self.autocast_dtype}), fp32 weights"
        if self.cast_dtype:
            return f"weights and floating inputs cast to torch.{self.cast_dtype} " \
                   "(model.to(dtype)), no autocast"
        return "fp32 throughout (TF32 disabled)"


def _cuda_bf16_check() -> str | None:
    import torch  # on use (module docstring)

    if not torch.cuda.is_bf16_supported():
        return f"bf16 not supported by {torch.cuda.get_device_name()}"
    return None


def _cuda_fp8_check() -> str | None:
    import torch  # on use (module docstring)

    capability = torch.cuda.get_device_capability()
    if capability < (8, 9):
        return f"float8 matmuls need compute capability 8.9+ (Ada/Hopper), " \
               f"{torch.cuda.get_device_name()} has {capability[0]}.{capability[1]}"
    try:
        import torchao.float8  # noqa: F401 - optional: is fp8 training importable here?
    except ImportError as exc:
        return f"torchao float8 training is not importable: {exc}"
    return None


def _cuda_tf32_check() -> str | None:
    import torch  # on use (module docstring)

    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"TF32 needs compute capability 8.0+, {torch.cuda.get_device_name()} has {major}.x"
    return None


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "IEEE float32"),
        Precision("tf32", "float32 storage, TF32 tensor-core math", tf32=True,
                  devices=("cuda",), cuda_check=_cuda_tf32_check),
        Precision("fp16", "float16 autocast", autocast_dtype="float16"),
        Precision("bf16", "bfloat16 autocast", autocast_dtype="bfloat16",
                  cuda_check=_cuda_bf16_check),
        Precision("fp8", "float8 Linear matmuls (torchao float8 training), bf16 elsewhere",
                  autocast_dtype="bfloat16", devices=("cuda",), cuda_check=_cuda_fp8_check,
                  float8_training=True),
        Precision("fp16_cast", "float16 weights and activations", cast_dtype="float16"),
        Precision("bf16_cast", "bfloat16 weights and activations", cast_dtype="bfloat16",
                  cuda_check=_cuda_bf16_check),
    )
}


def get_precision(name: str) -> Precision:
    return PRECISIONS[name]
