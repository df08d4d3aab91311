"""From a trained fp32 model to the thing that is timed: prune -> quantize -> cast -> run.

A workload hands over its fp32 model in a ``ModelAdapter`` (input names, calibration and
check inputs, its structured-pruning rule); ``build_variant`` applies the case's variant
axes in a fixed order and returns a ``Variant``: a step to time, the inputs it takes
(prepared outside the timed region), an accuracy path through the very same step, and a
``ModelResult`` saying what was built and how big it is.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.results.schema import ModelResult
from bench.spec.axes import Setting
from bench.variants import backends, pruning, quantization
from bench.variants.precision import Precision, get_precision

Inputs = tuple[torch.Tensor, ...]


def variant_axes() -> dict[str, Setting]:
    """The axes a workload gets by building its model through this pipeline."""
    return {a.name: a for a in (backends.AXIS, quantization.AXIS, pruning.AXIS)}


@dataclass(frozen=True)
class VariantSupport:
    """What a workload's model allows, declared on the workload class (read before any
    worker starts, so unsupported combinations are skipped with a reason)."""

    structured_pruning: str | None = None  # what structured pruning removes; None: none
    torch_static_int8: str | None = "this model has no eager-mode static int8 path"


def unsupported_reason(axes: dict[str, Any], device: str, support: VariantSupport) -> str | None:
    backend = backends.BACKENDS[axes.get("backend", "eager")]
    quant = quantization.QUANTIZATIONS[axes.get("quantization", "none")]
    prune_ = pruning.PRUNINGS[axes.get("pruning", "none")]
    precision = axes.get("precision", "fp32")
    if quant.name != "none" and precision != "fp32":
        return "int8 quantization starts from the fp32 model: set precision=fp32"
    if backend.name == "onnxruntime" and precision != "fp32":
        return "the onnxruntime backend runs the fp32 export and its int8 quantizations; " \
               "fp16/bf16 ONNX conversion is not built"
    if quant.name != "none" and backend.name == "compile" and device == "cuda":
        return "torchao PT2E int8 with the X86InductorQuantizer lowers to x86 CPU kernels only"
    if quant.name != "none" and backend.name == "eager" and device == "cuda":
        return "torch.ao int8 kernels (x86/fbgemm/onednn engines) run on CPU only"
    if quant.static and backend.name == "eager" and support.torch_static_int8:
        return support.torch_static_int8
    if prune_.kind == "structured" and support.structured_pruning is None:
        return "this workload has no structured pruning rule"
    if prune_.kind == "semi_structured" and quant.name != "none":
        return "2:4 semi-structured sparsity and int8 quantization are not combined here"
    return prune_.unsupported_reason(device, precision, backend.name) or \
        backend.unsupported_reason(device)


@dataclass
class ModelAdapter:
    model: nn.Module  # trained fp32 model in eval mode, on the case's device
    input_names: tuple[str, ...]
    output_name: str
    dynamic_axes: dict[str, dict[int, str]]
    check_inputs: list[Inputs]  # export check: torch vs the exported model
    calibration: list[Inputs]  # held-out inputs for static quantization
    structured_pruner: pruning.StructuredPruner | None = None
    # ONNX static int8: which ops get QDQ pairs (None: all). Transformers keep softmax,
    # layernorm and residual adds in float, as ONNX Runtime advises for BERT models.
    onnx_static_op_types: tuple[str, ...] | None = None


@dataclass
class Variant:
    step: Callable[[Any], object]
    prepare: Callable[[Inputs], Any]
    output: Callable[[Any], torch.Tensor]
    precision: Precision
    device: str
    model: ModelResult
    _workdir: Any = field(default=None, repr=False)
    _pending_check: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)

    def finalize(self) -> ModelResult:
        """Run the checks kept for after timing (the export check) and return the record.

        They run after the timed steps because their large allocations change the
        process's allocator state: glibc then hands later steps recycled heap pages
        instead of fresh ones, and the timed figure would depend on what ran before
        (seen here: 1.6-5.7k vs 12-15k minor page faults per minilm batch)."""
        if self._pending_check is not None:
            self.model.export_check = self._pending_check()
            self._pending_check = None
        return self.model

    def session(self) -> contextlib.AbstractContextManager[object]:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self.precision.context(self.device))
        return stack

    def infer(self, inputs: Inputs) -> torch.Tensor:
        """The timed path, once, with a float32 CPU result (for accuracy)."""
        with self.session():
            return self.output(self.step(self.prepare(inputs))).float().cpu()


def serialized_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def export_check(reference: nn.Module, runner: backends.OrtRunner,
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
            "passed": bool(cos.min() >= 0.9999),
            "method": "exported fp32 model vs torch fp32 on the same inputs; "
                      "cosine per output row, pass at min cosine >= 0.9999"}


def build_variant(adapter: ModelAdapter, axes: dict[str, Any], device: str) -> Variant:
    precision = get_precision(axes.get("precision", "fp32"))
    backend = backends.BACKENDS[axes.get("backend", "eager")]
    quant = quantization.QUANTIZATIONS[axes.get("quantization", "none")]
    prune_ = pruning.PRUNINGS[axes.get("pruning", "none")]
    steps: list[str] = []
    build_s: dict[str, float] = {}
    clock = time.perf_counter

    model = copy.deepcopy(adapter.model).eval()
    started = clock()
    if prune_.kind != "none":
        steps.append(f"pruning {prune_.name}: "
                     f"{pruning.apply(model, prune_, adapter.structured_pruner)}")
        build_s["prune"] = clock() - started
    sparsity = pruning.sparsity_report(model)
    reference_parameters = sum(p.numel() for p in adapter.model.parameters())

    workdir = None
    int8_weights = 0
    if backend.name == "onnxruntime":
        workdir = tempfile.TemporaryDirectory(prefix="bench-onnx-")
        fp32_path = Path(workdir.name) / "model.onnx"
        started = clock()
        steps.append("export: " + backends.export_onnx(
            model, adapter.check_inputs[0], fp32_path, adapter.input_names,
            adapter.output_name, adapter.dynamic_axes))
        build_s["export"] = clock() - started
        def pending_check() -> dict[str, Any]:
            runner = backends.OrtRunner.open(fp32_path, adapter.input_names, device)
            return export_check(model, runner, adapter.check_inputs)

        path = fp32_path
        if quant.name != "none":
            started = clock()
            path = Path(workdir.name) / "model.int8.onnx"
            feeds = [backends.numpy_feeds(adapter.input_names, batch)
                     for batch in adapter.calibration]
            how = quantization.onnx_quantize(fp32_path, path, quant, feeds,
                                             adapter.onnx_static_op_types)
            steps.append(f"quantization {quant.name}: {how}")
            build_s["quantize"] = clock() - started
            int8_weights = quantization.onnx_int8_initializers(path)
        started = clock()
        runner = backends.OrtRunner.open(path, adapter.input_names, device)
        build_s["session"] = clock() - started
        steps.append("backend: " + runner.describe())
        return Variant(runner.step, runner.prepare, runner.outputs, precision, device,
                       _model_result(steps, path.stat().st_size, "size of the .onnx file",
                                     sparsity, int8_weights, build_s, reference_parameters),
                       workdir, pending_check)

    if quant.name != "none":
        started = clock()
        if backend.name == "compile":
            model, how = quantization.torchao_pt2e(model, quant, adapter.calibration,
                                                   adapter.input_names, adapter.dynamic_axes)
        elif quant.static:
            model, how = quantization.torch_static(model, adapter.calibration)
        else:
            model, how = quantization.torch_dynamic(model)
        steps.append(f"quantization {quant.name}: {how}")
        build_s["quantize"] = clock() - started
        int8_weights = quantization.count_int8_weights(model)
    prepare: Callable[[Inputs], Any] = lambda inputs: inputs  # noqa: E731
    if precision.cast_dtype:
        dtype = getattr(torch, precision.cast_dtype)
        model = model.to(dtype)
        steps.append(f"precision {precision.name}: {precision.method()}")

        def prepare(inputs: Inputs) -> Inputs:
            return tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)
    elif precision.name != "fp32":
        steps.append(f"precision {precision.name}: {precision.method()}")
    if prune_.kind == "semi_structured":
        converted = pruning.to_semi_structured(model)
        steps.append(f"2:4 storage: {converted} Linear weights as SparseSemiStructuredTensor")
    size = serialized_bytes(model)

    runnable = model
    if backend.name == "compile":
        # int8 graphs compile with static shapes: inductor's int8 conv lowering mis-strides
        # symbolic batch sizes (digits_cnn); each new shape compiles once.
        dynamic = False if quant.name != "none" else None
        runnable = torch.compile(model, dynamic=dynamic)
        args = "model, dynamic=False" if dynamic is False else "model"
        steps.append(f"backend: torch.compile({args}) (inductor, default mode); the first "
                     "call compiles and is the cold start")
    else:
        steps.append("backend: torch eager")

    def step(inputs: Inputs) -> object:
        return runnable(*inputs)

    return Variant(step, prepare, lambda out: out, precision, device,
                   _model_result(steps, size, "torch.save(state_dict) bytes", sparsity,
                                 int8_weights, build_s, reference_parameters))


def _model_result(steps: list[str], size: int, size_method: str,
                  sparsity: pruning.SparsityReport, int8_weights: int,
                  build_s: dict[str, float],
                  reference_parameters: int) -> ModelResult:
    return ModelResult(
        variant=steps, bytes=size, bytes_method=size_method,
        parameters=sparsity.parameters, nonzero_parameters=sparsity.nonzero_parameters,
        prunable_weights=sparsity.prunable_weights, weight_sparsity=sparsity.sparsity,
        int8_weights=int8_weights, export_check=None, build_s=build_s,
        reference_parameters=reference_parameters)
