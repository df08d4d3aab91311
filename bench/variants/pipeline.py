"""From a trained fp32 model to the thing that is timed: prune -> backend (quantize ->
cast -> run).

A workload hands over its fp32 model in a ``ModelAdapter`` (input names, calibration and
check inputs, its structured-pruning rule); ``build_variant`` resolves the case's variant
axes to their strategies (``VariantPlan``: a precision, a backend, and a quantization and a
pruning method or none), prunes, and asks the backend (bench.variants.backends) to build a
``Variant``: a step to time, the inputs it takes (prepared outside the timed region), an
accuracy path through the very same step, and a ``ModelResult`` saying what was built and
how big it is.
"""

from __future__ import annotations

import copy
from typing import Any

from bench.spec.axes import Setting
from bench.variants import pruning, quantization
from bench.variants.backends import BACKENDS, backend_axis
from bench.variants.precision import get_precision
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
           "plan_variant", "serialized_bytes", "unsupported_reason", "variant_axes"]


def variant_axes() -> dict[str, Setting]:
    """The axes a workload gets by building its model through this pipeline."""
    return {a.name: a for a in (backend_axis(), quantization.quantization_axis(),
                                pruning.pruning_axis())}


def plan_variant(axes: dict[str, Any], device: str,
                 support: VariantSupport | None = None) -> VariantPlan:
    """The case's variant axes resolved to their strategies."""
    return VariantPlan(get_precision(axes.get("precision", "fp32")),
                       BACKENDS[axes.get("backend", "eager")],
                       quantization.quantization_named(axes.get("quantization", "none")),
                       pruning.pruning_named(axes.get("pruning", "none")), device,
                       support or VariantSupport())


def unsupported_reason(axes: dict[str, Any], device: str, support: VariantSupport) -> str | None:
    """Why this combination of variant axes cannot run: each strategy's own rule, in the
    order they are applied, then what this machine lacks for the backend."""
    plan = plan_variant(axes, device, support)
    for strategy in (plan.quant, plan.backend, plan.prune):
        reason = strategy.unsupported_reason(plan) if strategy is not None else None
        if reason:
            return reason
    return plan.backend.unavailable_reason(device)


def build_variant(adapter: ModelAdapter, axes: dict[str, Any], device: str) -> Variant:
    plan = plan_variant(axes, device)
    log = BuildLog(reference_parameters=sum(p.numel() for p in adapter.model.parameters()))
    model = copy.deepcopy(adapter.model).eval()
    if plan.prune is not None:
        with log.timed("prune"):
            how = plan.prune.apply(model, adapter)
        log.steps.append(f"pruning {plan.prune.name}: {how}")
    log.sparsity = pruning.sparsity_report(model)
    variant = plan.backend.build(adapter, model, plan, log)
    if plan.quant is not None:  # every backend's int8 count, checked in one place
        quantization.require_int8_weights(variant.model.int8_weights, plan.quant.name,
                                          plan.backend.name)
    return variant
