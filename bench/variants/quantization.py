"""int8 quantization: the same three choices in PyTorch (torch.ao) and in ONNX Runtime.

- ``int8_dynamic``: int8 weights, activations quantized per batch at run time (Linear only
  in torch: ``quantize_dynamic``; MatMul/Gemm/Conv in ONNX Runtime: ``quantize_dynamic``).
- ``int8_static``: int8 weights and activations with scales fixed by calibration on held-out
  inputs (torch: eager-mode ``QuantWrapper`` + observers; ONNX Runtime: QDQ format with a
  calibration data reader).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.spec.axes import Setting


@dataclass(frozen=True)
class Quantization:
    name: str
    description: str
    static: bool = False


QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("none", "no quantization"),
        Quantization("int8_dynamic", "int8 weights, activations quantized at run time"),
        Quantization("int8_static", "int8 weights and activations, scales from calibration",
                     static=True),
    )
}

AXIS = Setting("quantization", str, "none", choices=tuple(QUANTIZATIONS), phases=("infer",),
               help="int8 quantization of the fp32 model")


def _silence_deprecation() -> None:
    import warnings

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


def count_int8_weights(model: nn.Module) -> int:
    """Number of int8 weight elements held by a torch quantized model."""
    total = 0
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


def onnx_quantize(source: Path, target: Path, method: Quantization,
                  calibration_feeds: list[dict[str, object]] | None,
                  static_op_types: tuple[str, ...] | None = None) -> str:
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
        if not method.static:
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
