"""Pruning, made permanent before timing (torch.nn.utils.prune, then prune.remove).

- ``magnitude-NN``: unstructured L1 pruning of NN% of every Linear/Conv weight. The tensors
  stay dense, so dense kernels do the same work: expect no speed-up, and the figures show it.
- ``structured-NN``: NN% of whole units removed by the workload's own rule (attention heads
  for transformers, physically removed; conv output channels for CNNs).
- ``semi-2:4``: 2:4 semi-structured sparsity (two zeros in every four weights along the
  input dimension) stored as torch's SparseSemiStructuredTensor: CUDA, compute capability
  8.0+, fp16/bf16 weights.

Each kind is a strategy class: ``unsupported_reason(plan)`` for the cases it cannot run,
``apply(model, adapter)`` on the fp32 model before the backend, and ``store(model)``, which
the eager backend calls after the precision cast (2:4 storage). The axis value ``none`` is no
strategy at all; ``PRUNINGS`` holds one instance per axis value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import prune
from torch.sparse import to_sparse_semi_structured

from bench.spec.axes import Setting

if TYPE_CHECKING:
    from bench.variants.variant import ModelAdapter, VariantPlan

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
NONE = "none"


StructuredPruner = Callable[[nn.Module, float], str]


def prunable_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, PRUNABLE)]


def magnitude(model: nn.Module, amount: float) -> str:
    for module in prunable_modules(model):
        prune.l1_unstructured(module, "weight", amount=amount)
        prune.remove(module, "weight")
    return f"torch.nn.utils.prune.l1_unstructured(amount={amount}) on every Linear/Conv " \
           "weight, then prune.remove (dense tensors with zeros)"


def conv_channels(model: nn.Module, amount: float) -> str:
    """Structured pruning of conv output channels by L2 norm (zeroed, shapes kept)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    for module in convs:
        prune.ln_structured(module, "weight", amount=amount, n=2, dim=0)
        prune.remove(module, "weight")
        if module.bias is not None:
            with torch.no_grad():
                dead = module.weight.flatten(1).abs().sum(1) == 0
                module.bias[dead] = 0
    return f"torch.nn.utils.prune.ln_structured(n=2, dim=0, amount={amount}) on " \
           f"{len(convs)} conv layers (output channels zeroed with their bias; dense shapes kept)"


def _two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    groups = weight.abs().reshape(-1, 4)
    keep = groups.topk(2, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return mask.reshape(weight.shape)


def _semi_structured_linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)
            and m.in_features % 64 == 0 and m.out_features % 64 == 0]


def semi_structured_mask(model: nn.Module) -> str:
    """Zero the 2 smallest-magnitude weights of every 4 (dense tensors, masks permanent)."""
    layers = _semi_structured_linears(model)
    for module in layers:
        with torch.no_grad():
            module.weight.mul_(_two_four_mask(module.weight))
    return f"2:4 magnitude mask on {len(layers)} Linear layers (dims multiple of 64), " \
           "stored by torch.sparse.to_sparse_semi_structured after the precision cast"


def to_semi_structured(model: nn.Module) -> int:
    """Replace masked Linear weights by SparseSemiStructuredTensor (CUDA, fp16/bf16)."""
    layers = _semi_structured_linears(model)
    for module in layers:
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()),
                                     requires_grad=False)
    return len(layers)


@dataclass(frozen=True)
class SparsityReport:
    prunable_weights: int
    zero_weights: int
    parameters: int
    nonzero_parameters: int

    @property
    def sparsity(self) -> float:
        return self.zero_weights / self.prunable_weights if self.prunable_weights else 0.0


def sparsity_report(model: nn.Module) -> SparsityReport:
    prunable = zeros = 0
    for module in prunable_modules(model):
        w = module.weight.detach()
        prunable += w.numel()
        zeros += int((w == 0).sum())
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p.detach() != 0).sum()) for p in model.parameters())
    return SparsityReport(prunable, zeros, params, nonzero)




@dataclass(frozen=True)
class Pruning(ABC):
    amount: float  # fraction of the prunable weights (or units) removed

    @property
    @abstractmethod
    def name(self) -> str:
        """The axis value."""

    def unsupported_reason(self, plan: VariantPlan) -> str | None:
        return None

    @abstractmethod
    def apply(self, model: nn.Module, adapter: ModelAdapter) -> str:
        """Prune ``model`` in place, permanently; say how."""

    def store(self, model: nn.Module) -> str | None:
        """After the precision cast (eager backend): change how the weights are stored."""
        return None


@dataclass(frozen=True)
class Magnitude(Pruning):
    @property
    def name(self) -> str:
        return f"magnitude-{round(self.amount * 100)}"

    def apply(self, model: nn.Module, adapter: ModelAdapter) -> str:
        return magnitude(model, self.amount)


@dataclass(frozen=True)
class Structured(Pruning):
    """Whole units by the workload's own rule (``ModelAdapter.structured_pruner``)."""

    @property
    def name(self) -> str:
        return f"structured-{round(self.amount * 100)}"

    def unsupported_reason(self, plan: VariantPlan) -> str | None:
        if plan.support.structured_pruning is None:
            return "this workload has no structured pruning rule"
        return None

    def apply(self, model: nn.Module, adapter: ModelAdapter) -> str:
        if adapter.structured_pruner is None:
            raise ValueError("this workload has no structured pruning rule")
        return adapter.structured_pruner(model, self.amount)


@dataclass(frozen=True)
class SemiStructured(Pruning):
    amount: float = 0.5

    @property
    def name(self) -> str:
        return "semi-2:4"

    def unsupported_reason(self, plan: VariantPlan) -> str | None:
        if plan.quant is not None:
            return "2:4 semi-structured sparsity and int8 quantization are not combined here"
        if plan.device != "cuda":
            return "2:4 semi-structured sparse kernels (cuSPARSELt/CUTLASS) run on CUDA only"
        if plan.precision.name not in ("fp16_cast", "bf16_cast"):
            return "2:4 semi-structured sparsity needs fp16/bf16 weights: use precision " \
                   "fp16_cast or bf16_cast"
        if plan.backend.name != "eager":
            return "2:4 semi-structured tensors are timed with backend=eager only"
        major, _ = torch.cuda.get_device_capability()
        if major < 8:
            return f"2:4 sparsity needs compute capability 8.0+, " \
                   f"{torch.cuda.get_device_name()} has {major}.x"
        return None

    def apply(self, model: nn.Module, adapter: ModelAdapter) -> str:
        return semi_structured_mask(model)

    def store(self, model: nn.Module) -> str | None:
        return f"2:4 storage: {to_semi_structured(model)} Linear weights as " \
               "SparseSemiStructuredTensor"


PRUNINGS: dict[str, Pruning] = {}


def register_pruning(method: Pruning) -> Pruning:
    if method.name in PRUNINGS or method.name == NONE:
        raise ValueError(f"pruning {method.name!r} registered twice")
    PRUNINGS[method.name] = method
    return method


for _method in (Magnitude(0.3), Magnitude(0.5), Magnitude(0.7), Magnitude(0.9),
                Structured(0.25), Structured(0.5), SemiStructured()):
    register_pruning(_method)


def pruning_axis() -> Setting:
    return Setting("pruning", str, NONE, choices=(NONE, *PRUNINGS), phases=("infer",),
                   help="weight pruning, made permanent before timing", variant=True)


def pruning_named(name: str) -> Pruning | None:
    """The strategy for an axis value (None for ``none``)."""
    return None if name == NONE else PRUNINGS[name]
