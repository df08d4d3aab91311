"""int8 quantization: the same choices in PyTorch and in ONNX Runtime.

- ``int8_dynamic``: int8 weights, activations quantized per batch at run time (Linear only
  in torch eager: ``quantize_dynamic``; MatMul/Gemm/Conv in ONNX Runtime: ``quantize_dynamic``).
- ``int8_static``: int8 weights and activations with scales fixed by calibration on held-out
  inputs (torch eager: ``QuantWrapper`` + observers; ONNX Runtime: QDQ format with a
  calibration data reader).

With ``backend=compile`` both go through torchao's PT2E flow instead (torch.export ->
``prepare_pt2e`` with the ``X86InductorQuantizer`` -> calibration -> ``convert_pt2e``), which
inductor lowers to oneDNN int8 kernels: the path PyTorch now documents for int8 on x86, and
the one that handles graphs eager mode cannot wrap (BERT).

Each method is a strategy class (``@register_quantization``) that says which cases it cannot
run and quantizes for each kind of backend: ``torch_ao`` (eager), ``pt2e`` (compile),
``onnx`` (ONNX Runtime). The axis value ``none`` is no strategy at all.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from bench.spec.axes import Setting
from bench.variants import VariantNotApplied

if TYPE_CHECKING:
    from bench.variants.variant import ModelAdapter, VariantPlan

NONE = "none"


class Quantization(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    static: ClassVar[bool]  # activation scales fixed by calibration (else per batch)

    def unsupported_reason(self, plan: VariantPlan) -> str | None:
        if plan.precision.name != "fp32":
            return "int8 quantization starts from the fp32 model: set precision=fp32"
        return None

    @abstractmethod
    def torch_ao(self, model: nn.Module, adapter: ModelAdapter) -> tuple[nn.Module, str]:
        """The torch eager int8 model (torch.ao.quantization) and how it was made."""

    def pt2e(self, model: nn.Module, adapter: ModelAdapter) -> tuple[nn.Module, str]:
        """The torchao PT2E int8 graph, for torch.compile with inductor freezing."""
        return torchao_pt2e(model, self.static, adapter.calibration, adapter.input_names,
                            adapter.dynamic_axes)

    def onnx(self, source: Path, target: Path, adapter: ModelAdapter) -> str:
        """Quantize the exported fp32 ``source`` into ``target`` (onnxruntime.quantization)."""
        return onnx_quantize(source, target, self.static, adapter.calibration_feeds(),
                             adapter.onnx_static_op_types)


QUANTIZATIONS: dict[str, Quantization] = {}


def register_quantization(cls: type[Quantization]) -> type[Quantization]:
    if cls.name in QUANTIZATIONS or cls.name == NONE:
        raise ValueError(f"quantization {cls.name!r} registered twice")
    QUANTIZATIONS[cls.name] = cls()
    return cls


def quantization_named(name: str) -> Quantization | None:
    """The strategy for an axis value (None for ``none``)."""
    return None if name == NONE else QUANTIZATIONS[name]


def quantization_axis() -> Setting:
    return Setting("quantization", str, NONE, choices=(NONE, *QUANTIZATIONS), phases=("infer",),
                   help="int8 quantization of the fp32 model", variant=True)


def _silence_deprecation() -> None:
    # torch.ao.quantization warns that it is deprecated in favour of torchao on import and
    # on every quantized tensor it creates; the warning says nothing about this run.
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")


def torch_dynamic(model: nn.Module) -> tuple[nn.Module, str]:
    _silence_deprecation()
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return quantized, "torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8), " \
                      f"engine {torch.backends.quantized.engine}"


def torch_static(model: nn.Module, calibration: Iterable[Sequence[torch.Tensor]]
                 ) -> tuple[nn.Module, str]:
    """Eager-mode static quantization of a model made of quantizable modules
    (conv, linear, relu, pooling): QuantStub/DeQuantStub around the whole model."""
    _silence_deprecation()
    quant = torch.ao.quantization
    engine = torch.backends.quantized.engine
    wrapped = quant.QuantWrapper(model).eval()
    wrapped.qconfig = quant.get_default_qconfig(engine)
    prepared = quant.prepare(wrapped, inplace=False)
    batches = 0
    with torch.inference_mode():
        for inputs in calibration:
            prepared(*inputs)
            batches += 1
    converted = quant.convert(prepared, inplace=False)
    return converted, f"torch.ao eager static: QuantWrapper, default {engine} qconfig " \
                      f"(per-channel weights, histogram activations), {batches} calibration batches"


def _import_pt2e():  # noqa: ANN202 - module objects
    # On use: torchao (~1 s) serves compile int8 only, and its import logs every optional
    # CUDA kernel library it cannot load on this host.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    # (the import after the logger is quieted)
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    return x86, prepare_pt2e, convert_pt2e


def torchao_pt2e(model: nn.Module, static: bool,
                 calibration: list[Sequence[torch.Tensor]], input_names: tuple[str, ...],
                 dynamic_axes: dict[str, dict[int, str]]) -> tuple[nn.Module, str]:
    """torch.export the model with the workload's dynamic axes, quantize it with the x86
    inductor quantizer (static: calibrated on ``calibration``; dynamic: weights only,
    activation scales per batch at run time). The result is meant for torch.compile with
    inductor freezing, which replaces the quantize/dequantize pairs by int8 kernels."""
    import torch._inductor.config as inductor_config  # inductor (~1 s): compile int8 only

    x86, prepare_pt2e, convert_pt2e = _import_pt2e()
    # Dim.DYNAMIC lets export infer each axis's range (minilm's sequence stops at 512
    # positions); positional, since forward's argument names are the model's own.
    dynamic_shapes: tuple = tuple(
        {axis: torch.export.Dim.DYNAMIC for axis in dynamic_axes.get(name, {})}
        for name in input_names)
    # A forward(*inputs) (a wrapper of the user's model) is one parameter to export: its
    # dynamic shapes are then one tuple holding every input's.
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL
           for p in inspect.signature(model.forward).parameters.values()):
        dynamic_shapes = (dynamic_shapes,)
    labels = sorted({label for name in input_names
                     for label in dynamic_axes.get(name, {}).values()})
    example = tuple(calibration[0])
    with torch.no_grad():
        exported = torch.export.export(model, example, dynamic_shapes=dynamic_shapes).module()
        quantizer = x86.X86InductorQuantizer().set_global(
            x86.get_default_x86_inductor_quantization_config(is_dynamic=not static))
        prepared = prepare_pt2e(exported, quantizer)
        batches = calibration if static else calibration[:1]
        for inputs in batches:
            prepared(*inputs)
        converted = _drop_unreferenced(convert_pt2e(prepared))
    # Without freezing inductor keeps the weights as graph inputs and runs the q/dq pairs
    # as float ops: no int8 kernels.
    inductor_config.freezing = True
    activations = (f"activations uint8 per tensor, calibrated on {len(batches)} held-out "
                   "batches (histogram observer)" if static
                   else "activations quantized per batch at run time")
    return converted, ("torchao PT2E: torch.export (dynamic " + ", ".join(labels)
                       + ") -> prepare_pt2e(X86InductorQuantizer: weights int8 per channel, "
                       + activations + ") -> convert_pt2e; inductor freezing on")


def _drop_unreferenced(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """convert_pt2e folds each weight into an int8 constant but keeps the fp32 original as
    a dead attribute; drop those, so the saved state (the model size we report) is what the
    graph uses."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in itertools.chain(graph_module.named_parameters(),
                                               graph_module.named_buffers())]:
        if name not in used:
            owner_path, _, attr = name.rpartition(".")
            owner = graph_module.get_submodule(owner_path) if owner_path else graph_module
            delattr(owner, attr)
    return graph_module


def require_int8_weights(count: int, method: str, backend: str) -> int:
    """``count`` (the int8 weight elements of a quantized model), or VariantNotApplied when
    it is 0: the quantizer found no layer it quantizes (none in the model, or a quantizer
    that matched no pattern, as torchao 0.18's X86InductorQuantizer on torch 2.11)."""
    if count == 0:
        raise VariantNotApplied(
            f"quantization {method} left no int8 weights (backend {backend}; torch "
            f"{torch.__version__}): no layer was quantized, so its figures would be fp32's")
    return count


def count_int8_weights(model: nn.Module) -> int:
    """Number of int8 weight elements held by a torch quantized model (torch.ao quantized
    modules, or int8 constants of a PT2E-converted graph)."""
    total = sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers())
                if t.dtype == torch.int8)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight):  # quantized modules expose weight() returning a qint8 tensor
            try:
                w = weight()
            except (RuntimeError, TypeError):
                continue
            if isinstance(w, torch.Tensor) and w.dtype == torch.qint8:
                total += w.numel()
    return total


def onnx_quantize(source: Path, target: Path, static: bool,
                  calibration_feeds: list[dict[str, object]] | None,
                  static_op_types: tuple[str, ...] | None = None) -> str:
    # onnxruntime's quantization tools (~1 s) on use: the onnxruntime backend only.
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict[str, object]]) -> None:
            self._iter = iter(feeds)

        def get_next(self) -> dict[str, object] | None:
            return next(self._iter, None)

    prepared = target.with_suffix(".pre.onnx")
    # ORT's shape inference and calibration write temporary models into the working
    # directory: keep them beside the model, never in the caller's tree.
    with contextlib.chdir(target.parent):
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if not static:
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
            return "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8) after " \
                   "quant_pre_process"
        if not calibration_feeds:
            raise ValueError("static quantization needs calibration inputs")
        quantize_static(str(prepared), str(target), Reader(calibration_feeds),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=list(static_op_types) if static_op_types else None)
    ops = ", ".join(static_op_types) if static_op_types else "all supported ops"
    return f"onnxruntime.quantization.quantize_static(QDQ, activations QUInt8, weights " \
           f"QInt8 per channel, ops: {ops}; MinMax calibration on {len(calibration_feeds)} " \
           "held-out batches) after quant_pre_process"


def onnx_int8_initializers(path: Path) -> int:
    """Number of int8/uint8 weight elements stored in an ONNX file."""
    # onnx on use: the onnxruntime backend only.
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path))
    total = 0
    for init in model.graph.initializer:
        if init.data_type in (TensorProto.INT8, TensorProto.UINT8):
            count = 1
            for d in init.dims:
                count *= d
            total += count
    return total


@register_quantization
class Int8Dynamic(Quantization):
    name = "int8_dynamic"
    description = "int8 weights, activations quantized at run time"
    static = False

    def torch_ao(self, model: nn.Module, adapter: ModelAdapter) -> tuple[nn.Module, str]:
        return torch_dynamic(model)


@register_quantization
class Int8Static(Quantization):
    name = "int8_static"
    description = "int8 weights and activations, scales from calibration"
    static = True

    def torch_ao(self, model: nn.Module, adapter: ModelAdapter) -> tuple[nn.Module, str]:
        return torch_static(model, adapter.calibration)
