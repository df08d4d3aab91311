"""Backends: what runs the (pruned, quantized, cast) model.

- ``eager``: the torch module called as is.
- ``compile``: ``torch.compile(model)``; the first call compiles, so compile time is the
  case's cold start.
- ``onnxruntime``: exported with ``torch.onnx.export``, checked against torch on the same
  inputs, run by an ``InferenceSession`` (CPU provider; CUDA provider with IO binding when
  onnxruntime has it).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.spec.axes import Setting


@dataclass(frozen=True)
class Backend:
    name: str
    description: str

    def unsupported_reason(self, device: str) -> str | None:
        if self.name == "compile" and device == "cpu" and not shutil.which("g++"):
            return "torch.compile on CPU needs a C++ compiler (g++ not found)"
        if self.name == "onnxruntime" and device == "cuda":
            import onnxruntime

            providers = onnxruntime.get_available_providers()
            if "CUDAExecutionProvider" not in providers:
                return "this onnxruntime build has no CUDAExecutionProvider " \
                       f"(providers: {', '.join(providers)})"
        return None


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", "torch eager"),
        Backend("compile", "torch.compile (inductor), compile time reported as cold start"),
        Backend("onnxruntime", "ONNX Runtime InferenceSession of the torch.onnx export"),
    )
}

AXIS = Setting("backend", str, "eager", choices=tuple(BACKENDS), phases=("infer",),
               help="what runs the model")

OPSET = 17


def export_onnx(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path,
                input_names: tuple[str, ...], output_name: str,
                dynamic_axes: dict[str, dict[int, str]]) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(model, example, str(path), input_names=list(input_names),
                          output_names=[output_name], dynamic_axes=dynamic_axes,
                          opset_version=OPSET, dynamo=False)
    return f"torch.onnx.export(dynamo=False, opset {OPSET}, dynamic axes " \
           f"{sorted({a for axes in dynamic_axes.values() for a in axes.values()})})"


def numpy_feeds(input_names: tuple[str, ...],
                inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy() for name, t in zip(input_names, inputs, strict=True)}


@dataclass
class OrtRunner:
    """An InferenceSession with its feeds prepared outside the timed region."""

    session: Any
    input_names: tuple[str, ...]
    device: str
    provider: str

    @classmethod
    def open(cls, path: Path, input_names: tuple[str, ...], device: str) -> OrtRunner:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        session = ort.InferenceSession(str(path), options, providers=[provider])
        return cls(session, input_names, device, provider)

    def prepare(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        if self.device != "cuda":
            return numpy_feeds(self.input_names, inputs)
        binding = self.session.io_binding()
        for name, tensor in zip(self.input_names, inputs, strict=True):
            tensor = tensor.contiguous()
            binding.bind_input(name, "cuda", 0, _numpy_dtype(tensor.dtype), tuple(tensor.shape),
                               tensor.data_ptr())
        for output in self.session.get_outputs():
            binding.bind_output(output.name, "cuda")
        return binding, inputs  # keep the torch tensors alive while bound

    def step(self, prepared: Any) -> Any:
        if self.device != "cuda":
            return self.session.run(None, prepared)
        binding, _ = prepared
        self.session.run_with_iobinding(binding)
        # ORT runs on its own CUDA stream: synchronize inside the timed region.
        torch.cuda.synchronize()
        return binding

    def outputs(self, result: Any) -> torch.Tensor:
        if self.device != "cuda":
            return torch.from_numpy(np.asarray(result[0]))
        return torch.from_numpy(result.copy_outputs_to_cpu()[0])

    def describe(self) -> str:
        options = self.session.get_session_options()
        return f"onnxruntime {_ort_version()} {self.provider}, intra_op_threads " \
               f"{options.intra_op_num_threads}, ORT_ENABLE_ALL" + \
               (", IO binding + torch.cuda.synchronize() per step" if self.device == "cuda"
                else "")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _numpy_dtype(dtype: torch.dtype) -> type:
    return {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32,
            torch.float16: np.float16}[dtype]
