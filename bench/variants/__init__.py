"""Variants a case can run under: devices, precisions, backends (eager, torch.compile, ONNX
Runtime), int8 quantization, pruning and distillation (bench.variants.pipeline applies them)."""


class VariantNotApplied(RuntimeError):  # noqa: N818 - a case's reason reads "VariantNotApplied: ..."
    """A variant's transformation changed nothing (a quantizer that quantized no layer, fp8
    that swapped no Linear): timing it would report the unchanged model under the variant's
    name, so the case fails with this reason instead."""
