"""What the variant strategies share: the workload's model as handed over
(``ModelAdapter``), the case's choices resolved (``VariantPlan``), the log of what was built
(``BuildLog``) and the thing that is timed (``Variant``)."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bench.results.schema import ModelResult
from bench.variants.precision import Precision

if TYPE_CHECKING:
    from bench.variants.backends import Backend
    from bench.variants.pruning import Pruning, SparsityReport, StructuredPruner
    from bench.variants.quantization import Quantization

Inputs = tuple[torch.Tensor, ...]

# The exported fp32 model passes its check against torch when every output row's cosine
# similarity reaches this.
EXPORT_MIN_COSINE = 0.9999


@dataclass(frozen=True)
class VariantSupport:
    """What a workload's model allows, declared on the workload class (read before any
    worker starts, so unsupported combinations are skipped with a reason)."""

    structured_pruning: str | None = None  # what structured pruning removes; None: none
    torch_static_int8: str | None = "this model has no eager-mode static int8 path"


@dataclass(frozen=True)
class VariantPlan:
    """A case's variant axes resolved to their strategies (None: the axis is ``none``);
    built by ``bench.variants.pipeline.plan_variant``."""

    precision: Precision
    backend: Backend
    quant: Quantization | None
    prune: Pruning | None
    device: str
    support: VariantSupport = field(default_factory=VariantSupport)


@dataclass
class ModelAdapter:
    model: nn.Module  # trained fp32 model in eval mode, on the case's device
    input_names: tuple[str, ...]
    output_name: str
    dynamic_axes: dict[str, dict[int, str]]
    check_inputs: list[Inputs]  # export check: torch vs the exported model
    calibration: list[Inputs]  # held-out inputs for static quantization
    structured_pruner: StructuredPruner | None = None
    # ONNX static int8: which ops get QDQ pairs (None: all). Transformers keep softmax,
    # layernorm and residual adds in float, as ONNX Runtime advises for BERT models.
    onnx_static_op_types: tuple[str, ...] | None = None

    def calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        return [numpy_feeds(self.input_names, batch) for batch in self.calibration]


@dataclass
class BuildLog:
    """Each build step in words and seconds, and the model's size before the backend."""

    reference_parameters: int
    sparsity: SparsityReport | None = None
    steps: list[str] = field(default_factory=list)
    build_s: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.build_s[stage] = time.perf_counter() - started

    def model_result(self, size: int, size_method: str, int8_weights: int) -> ModelResult:
        s = self.sparsity
        assert s is not None
        return ModelResult(
            variant=self.steps, bytes=size, bytes_method=size_method,
            parameters=s.parameters, nonzero_parameters=s.nonzero_parameters,
            prunable_weights=s.prunable_weights, weight_sparsity=s.sparsity,
            int8_weights=int8_weights, export_check=None, build_s=self.build_s,
            reference_parameters=self.reference_parameters)


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


class _ByteCounter(io.RawIOBase):
    """A write-only sink that counts what is written to it and keeps none of it."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.count += size
        return size


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as torch.save writes it. Counted as written, not
    kept: a buffer of the whole file would add the model's size (or twice it, as the
    buffer grows) to the process's peak memory, the figure the case is measuring."""
    counter = _ByteCounter()
    torch.save(model.state_dict(), counter)
    return counter.count


def numpy_feeds(input_names: tuple[str, ...],
                inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds: input name -> numpy array."""
    return {name: t.detach().cpu().numpy() for name, t in zip(input_names, inputs, strict=True)}
