"""Backends: what runs the (pruned, quantized, cast) model, each a strategy class.

- ``eager``: the torch module called as is.
- ``compile``: ``torch.compile(model)``; the first call compiles, so compile time is the
  case's cold start.
- ``onnxruntime``: exported with ``torch.onnx.export``, checked against torch on the same
  inputs, run by an ``InferenceSession`` (CPU provider; CUDA provider with IO binding when
  onnxruntime has it).

A backend says which combinations it cannot run (``unsupported_reason``) and what this
machine lacks for it (``unavailable_reason``), and builds the timed ``Variant`` from the
pruned fp32 model (``build``). Adding one is a ``@register_backend`` class in any module
that is imported; the ``backend`` axis offers every registered name. A backend that can
also run a training step (``trains``: eager, compile) wraps a module for it
(``training_module``): workloads that train their own model (gpt) take the same axis.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bench.spec.axes import Setting
from bench.variants import quantization
from bench.variants.quantization import Quantization
from bench.variants.variant import (
    EXPORT_MIN_COSINE,
    BuildLog,
    Inputs,
    ModelAdapter,
    Variant,
    VariantPlan,
    numpy_feeds,
    serialized_bytes,
)


class Backend(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    trains: ClassVar[bool] = False  # can run a training step (training_module)

    def unsupported_reason(self, plan: VariantPlan) -> str | None:
        """Why this backend cannot run the case's other variant choices (None: it can)."""
        return None

    def unavailable_reason(self, device: str) -> str | None:
        """What this machine lacks for this backend on ``device`` (None: nothing)."""
        return None

    @abstractmethod
    def build(self, adapter: ModelAdapter, model: nn.Module, plan: VariantPlan,
              log: BuildLog) -> Variant:
        """The timed variant of ``model`` (pruned, fp32, a copy this backend may change)."""

    def training_module(self, model: nn.Module, compile_mode: str = "default") -> nn.Module:
        """What a training step calls in place of ``model`` (only when ``trains``)."""
        raise NotImplementedError(f"backend {self.name} does not run training steps")


BACKENDS: dict[str, Backend] = {}

# torch.compile's modes (a training workload's compile_mode axis): CUDA graphs with
# reduce-overhead / max-autotune; max-autotune also searches matmul and Triton configs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def register_backend(cls: type[Backend]) -> type[Backend]:
    if cls.name in BACKENDS:
        raise ValueError(f"backend {cls.name!r} registered twice")
    BACKENDS[cls.name] = cls()
    return cls


def backend_axis() -> Setting:
    """The ``backend`` axis over every registered backend (read when a suite is loaded)."""
    return Setting("backend", str, "eager", choices=tuple(BACKENDS), phases=("infer",),
                   help="what runs the model", variant=True)


def training_backend_axis() -> Setting:
    """The ``backend`` axis of a workload that runs its own torch model in every phase."""
    return Setting("backend", str, "eager",
                   choices=tuple(name for name, b in BACKENDS.items() if b.trains),
                   help="what runs the model", variant=True)


@register_backend
class Eager(Backend):
    """The torch module as is: torch.ao int8, a cast for *_cast precisions, 2:4 storage."""

    name = "eager"
    description = "torch eager"
    trains = True

    def training_module(self, model: nn.Module, compile_mode: str = "default") -> nn.Module:
        return model

    def unsupported_reason(self, plan: VariantPlan) -> str | None:
        if plan.quant is not None and plan.device == "cuda":
            return "torch.ao int8 kernels (x86/fbgemm/onednn engines) run on CPU only"
        if plan.quant is not None and plan.quant.static and plan.support.torch_static_int8:
            return plan.support.torch_static_int8
        return None

    def quantize(self, model: nn.Module, quant: Quantization,
                 adapter: ModelAdapter) -> tuple[nn.Module, str]:
        return quant.torch_ao(model, adapter)

    def runnable(self, model: nn.Module, plan: VariantPlan, log: BuildLog) -> nn.Module:
        log.steps.append("backend: torch eager")
        return model

    def build(self, adapter: ModelAdapter, model: nn.Module, plan: VariantPlan,
              log: BuildLog) -> Variant:
        int8_weights = 0
        if plan.quant is not None:
            with log.timed("quantize"):
                model, how = self.quantize(model, plan.quant, adapter)
            log.steps.append(f"quantization {plan.quant.name}: {how}")
            int8_weights = quantization.count_int8_weights(model)
        precision = plan.precision
        model, prepare = precision.cast_model(model)
        if precision.name != "fp32":
            log.steps.append(f"precision {precision.name}: {precision.method()}")
        stored = plan.prune.store(model) if plan.prune is not None else None
        if stored:
            log.steps.append(stored)
        size = serialized_bytes(model)
        runnable = self.runnable(model, plan, log)

        def step(inputs: Inputs) -> object:
            return runnable(*inputs)

        return Variant(step, prepare, lambda out: out, precision, plan.device,
                       log.model_result(size, "torch.save(state_dict) bytes", int8_weights))


@register_backend
class Compile(Eager):
    """torch.compile (inductor) of the torch path; int8 through torchao PT2E."""

    name = "compile"
    description = "torch.compile (inductor), compile time reported as cold start"

    def unsupported_reason(self, plan: VariantPlan) -> str | None:
        if plan.quant is not None and plan.device == "cuda":
            return "torchao PT2E int8 with the X86InductorQuantizer lowers to x86 CPU kernels only"
        return None

    def training_module(self, model: nn.Module, compile_mode: str = "default") -> nn.Module:
        return torch.compile(model) if compile_mode == "default" else \
            torch.compile(model, mode=compile_mode)

    def unavailable_reason(self, device: str) -> str | None:
        if device == "cpu" and not shutil.which("g++"):
            return "torch.compile on CPU needs a C++ compiler (g++ not found)"
        return None

    def quantize(self, model: nn.Module, quant: Quantization,
                 adapter: ModelAdapter) -> tuple[nn.Module, str]:
        return quant.pt2e(model, adapter)

    def runnable(self, model: nn.Module, plan: VariantPlan, log: BuildLog) -> nn.Module:
        # int8 graphs compile with static shapes: inductor's int8 conv lowering mis-strides
        # symbolic batch sizes (digits_cnn); each new shape compiles once.
        dynamic = False if plan.quant is not None else None
        args = "model, dynamic=False" if dynamic is False else "model"
        log.steps.append(f"backend: torch.compile({args}) (inductor, default mode); the first "
                         "call compiles and is the cold start")
        return torch.compile(model, dynamic=dynamic)


@register_backend
class OnnxRuntime(Backend):
    """The fp32 torch.onnx export (int8 through onnxruntime.quantization) in a session."""

    name = "onnxruntime"
    description = "ONNX Runtime InferenceSession of the torch.onnx export"

    def unsupported_reason(self, plan: VariantPlan) -> str | None:
        if plan.precision.name != "fp32":
            return "the onnxruntime backend runs the fp32 export and its int8 " \
                   "quantizations; fp16/bf16 ONNX conversion is not built"
        return None

    def unavailable_reason(self, device: str) -> str | None:
        if device == "cuda":
            import onnxruntime  # on use (~0.5 s): only cases on this backend need it

            providers = onnxruntime.get_available_providers()
            if "CUDAExecutionProvider" not in providers:
                return "this onnxruntime build has no CUDAExecutionProvider " \
                       f"(providers: {', '.join(providers)})"
        return None

    def build(self, adapter: ModelAdapter, model: nn.Module, plan: VariantPlan,
              log: BuildLog) -> Variant:
        workdir = tempfile.TemporaryDirectory(prefix="bench-onnx-")
        fp32_path = Path(workdir.name) / "model.onnx"
        with log.timed("export"):
            log.steps.append("export: " + export_onnx(
                model, adapter.check_inputs[0], fp32_path, adapter.input_names,
                adapter.output_name, adapter.dynamic_axes))

        def pending_check() -> dict[str, Any]:
            runner = OrtRunner.open(fp32_path, adapter.input_names, plan.device)
            return export_check(model, runner, adapter.check_inputs)

        path, int8_weights = fp32_path, 0
        if plan.quant is not None:
            path = Path(workdir.name) / "model.int8.onnx"
            with log.timed("quantize"):
                how = plan.quant.onnx(fp32_path, path, adapter)
            log.steps.append(f"quantization {plan.quant.name}: {how}")
            int8_weights = quantization.onnx_int8_initializers(path)
        with log.timed("session"):
            runner = OrtRunner.open(path, adapter.input_names, plan.device)
        log.steps.append("backend: " + runner.describe())
        return Variant(runner.step, runner.prepare, runner.outputs, plan.precision,
                       plan.device, log.model_result(path.stat().st_size,
                                                     "size of the .onnx file", int8_weights),
                       workdir, pending_check)


def export_check(reference: nn.Module, runner: OrtRunner,
                 inputs: list[Inputs]) -> dict[str, Any]:
    """The exported fp32 model against torch on the same inputs."""
    max_abs = 0.0
    cosines = []
    with torch.inference_mode():
        for batch in inputs:
            expected = reference(*batch).float().cpu()
            got = runner.outputs(runner.step(runner.prepare(batch))).float()
            max_abs = max(max_abs, float((expected - got).abs().max()))
            cosines.append(nn.functional.cosine_similarity(
                expected.flatten(1), got.flatten(1), dim=1))
    cos = torch.cat(cosines)
    return {"max_abs_diff": max_abs, "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()), "rows": int(cos.numel()),
            "passed": bool(cos.min() >= EXPORT_MIN_COSINE),
            "method": "exported fp32 model vs torch fp32 on the same inputs; "
                      f"cosine per output row, pass at min cosine >= {EXPORT_MIN_COSINE}"}


OPSET = 17


def export_onnx(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path,
                input_names: tuple[str, ...], output_name: str,
                dynamic_axes: dict[str, dict[int, str]]) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(model, example, str(path), input_names=list(input_names),
                          output_names=[output_name], dynamic_axes=dynamic_axes,
                          opset_version=OPSET, dynamo=False)
    return f"torch.onnx.export(dynamo=False, opset {OPSET}, dynamic axes " \
           f"{sorted({a for axes in dynamic_axes.values() for a in axes.values()})})"


@dataclass
class OrtRunner:
    """An InferenceSession with its feeds prepared outside the timed region."""

    session: Any
    input_names: tuple[str, ...]
    device: str
    provider: str

    @classmethod
    def open(cls, path: Path, input_names: tuple[str, ...], device: str) -> OrtRunner:
        import onnxruntime as ort  # on use, as above

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
    import onnxruntime  # on use, as above

    return onnxruntime.__version__


def _numpy_dtype(dtype: torch.dtype) -> type:
    return {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32,
            torch.float16: np.float16}[dtype]
