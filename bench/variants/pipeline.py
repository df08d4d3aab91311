"""From a trained fp32 model to the thing that is timed: prune -> backend (quantize ->
cast -> run).

A workload hands over its fp32 model in a ``ModelAdapter`` (input names, calibration and
check inputs, its structured-pruning rule); ``build_variant`` resolves the case's variant
axes to their strategies (``VariantPlan``), prunes, and asks the backend
(bench.variants.backends) to build a ``Variant``: a step to time, the inputs it takes
(prepared outside the timed region), an accuracy path through the very same step, and a
``ModelResult`` saying what was built and how big it is.
"""

from __future__ import annotations

import copy
from typing import Any

from bench.spec.axes import Setting
from bench.variants import pruning, quantization
from bench.variants.backends import backend_axis
from bench.variants.variant import (
    BuildLog,
    Inputs,
    ModelAdapter,
    Variant,
    VariantPlan,
    VariantSupport,
    serialized_bytes,
)

__all__ = ["Inputs", "ModelAdapter", "Variant", "VariantSupport", "build_variant",
           "serialized_bytes", "unsupported_reason", "variant_axes"]


def variant_axes() -> dict[str, Setting]:
    """The axes a workload gets by building its model through this pipeline."""
    return {a.name: a for a in (backend_axis(), quantization.AXIS, pruning.AXIS)}


def unsupported_reason(axes: dict[str, Any], device: str, support: VariantSupport) -> str | None:
    """Why this combination of variant axes cannot run: the rules between families first,
    then the backend's own, then what the pruning method and the backend need here."""
    plan = VariantPlan.from_axes(axes, device, support)
    quant, prune_ = plan.quant, plan.prune
    if quant.name != "none" and plan.precision.name != "fp32":
        return "int8 quantization starts from the fp32 model: set precision=fp32"
    reason = plan.backend.unsupported_reason(plan)
    if reason:
        return reason
    if prune_.kind == "structured" and support.structured_pruning is None:
        return "this workload has no structured pruning rule"
    if prune_.kind == "semi_structured" and quant.name != "none":
        return "2:4 semi-structured sparsity and int8 quantization are not combined here"
    return prune_.unsupported_reason(device, plan.precision.name, plan.backend.name) or \
        plan.backend.unavailable_reason(device)


def build_variant(adapter: ModelAdapter, axes: dict[str, Any], device: str) -> Variant:
    plan = VariantPlan.from_axes(axes, device)
    log = BuildLog(reference_parameters=sum(p.numel() for p in adapter.model.parameters()))
    model = copy.deepcopy(adapter.model).eval()
    if plan.prune.kind != "none":
        with log.timed("prune"):
            how = pruning.apply(model, plan.prune, adapter.structured_pruner)
        log.steps.append(f"pruning {plan.prune.name}: {how}")
    log.sparsity = pruning.sparsity_report(model)
    return plan.backend.build(adapter, model, plan, log)
