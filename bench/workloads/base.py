"""The workload interface.

A workload declares its phases, axes, parameters and accuracy metrics (read by the
suite loader in the parent process) and, inside the worker, prepares a ``Phase``:
an object whose ``step()`` is one timed iteration (an optimizer step, or one
inference batch) and whose ``finish()`` returns the task metrics.
"""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from bench.spec.axes import Setting
from bench.spec.model import CLOSED_LOOP, SCENARIOS
from bench.units import MAX_BATCH_SIZE
from bench.variants.parallel import PARALLEL_HELP, PARALLEL_MODES, RankInfo
from bench.variants.precision import PRECISIONS

if TYPE_CHECKING:
    from bench.measurement.flops import FlopCount
    from bench.results.schema import ClassReport, ModelResult
    from bench.spec.model import CaseSpec
    from bench.variants.precision import Precision
    from bench.variants.variant import Variant


def common_axes(phases: tuple[str, ...]) -> dict[str, Setting]:
    """Axes every torch workload accepts. Precision names come from the variant registry."""
    axes = {
        "device": Setting("device", str, "cpu", choices=("cpu", "cuda"),
                          help="where the model runs"),
        "precision": Setting("precision", str, "fp32", choices=tuple(PRECISIONS),
                             help="numeric precision of the compute", variant=True),
        "batch_size": Setting("batch_size", int, 32, minimum=1, maximum=MAX_BATCH_SIZE,
                              help="samples per micro-batch"),
        "threads": Setting("threads", int, 0, minimum=0,
                           help="torch intra-op threads (0: leave torch's default)"),
    }
    if "train" in phases:
        axes["accum_steps"] = Setting(
            "accum_steps", int, 1, minimum=1, phases=("train",),
            help="micro-batches accumulated per optimizer step")
    return axes


def parallel_axes() -> dict[str, Setting]:
    """Training across processes (bench.variants.parallel): the mode and the ranks."""
    return {
        "parallel": Setting("parallel", str, "none", choices=PARALLEL_MODES, phases=("train",),
                            help="; ".join(f"{k}: {v}" for k, v in PARALLEL_HELP.items())),
        "world_size": Setting("world_size", int, 1, minimum=1, phases=("train",),
                              help="ranks (processes; one GPU each on CUDA); batch_size is "
                                   "per rank"),
    }


SCENARIO_HELP = ("closed_loop: back-to-back batches of batch_size (the engine's sampler); "
                 "single_stream, multi_stream, server, offline: MLPerf LoadGen's scenarios, "
                 "the phase served as its system under test (bench.measurement.serving)")


def serving_axes(phases: tuple[str, ...] = ("infer",)) -> dict[str, Setting]:
    """Inference as it is served (bench.measurement.serving): the LoadGen scenario. A phase
    that takes it implements ``Phase.serve``."""
    return {"scenario": Setting("scenario", str, CLOSED_LOOP, choices=SCENARIOS,
                                phases=phases, help=SCENARIO_HELP)}


@dataclass
class RunContext:
    """What the worker hands a workload: where and how to run."""

    device: str
    precision: Precision
    seed: int = 0
    ranks: RankInfo = field(default_factory=RankInfo)


@dataclass
class Outcome:
    """What a phase reports after its timed steps."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    model: ModelResult | None = None  # for phases built through bench.variants.pipeline
    classes: ClassReport | None = None  # a classification phase's per-class figures
    # The metric parity compares, when only the phase knows it (a user's evaluate);
    # otherwise the workload's task_metric(phase).
    task_metric: tuple[str, bool] | None = None


class Phase(ABC):
    samples_per_step: int = 1
    sample_unit: str = "samples"
    step_description: str = ""

    def session(self) -> contextlib.AbstractContextManager[object]:
        """Entered once around all timed steps (inference mode, autocast...), as a
        hand-written loop would, so per-step context switching is not timed."""
        return contextlib.nullcontext()

    @abstractmethod
    def step(self) -> object:
        """One timed iteration. Must not synchronize the device itself."""

    @abstractmethod
    def finish(self) -> Outcome:
        """Task metrics (accuracy, loss...) once timing is done."""

    def flop_count(self) -> FlopCount | None:
        """FLOPs of one step (counted and analytic), for MFU; None: not reported."""
        return None

    def pipeline_bubbles(self) -> list[float] | None:
        """Under pipeline parallelism, per step so far (the latest ones), the share of the
        schedule this rank's stage spent idle (bench.variants.parallel.Pipeline.bubbles);
        None otherwise."""
        return None

    # Whether ``serve`` serves tokens: ``serve(samples, first_token)`` calls
    # ``first_token()`` when the batch's first new tokens are on the host and returns the
    # tokens made per sample (LoadGen's token latencies: TTFT, TPOT).
    serves_tokens: ClassVar[bool] = False

    def serve(self, samples: int) -> object:
        """Serve one batch of ``samples`` (1 to ``samples_per_step``) as one call of the
        model: a LoadGen scenario's system under test (workloads with ``serving_axes``).
        Must not synchronize the device itself."""
        raise NotImplementedError(f"{type(self).__name__} cannot be served")

    def prepare_serving(self, sizes: list[int]) -> None:  # noqa: B027 - most need nothing
        """Build what ``serve`` needs for these batch sizes (outside the timed region)."""


class EvaluatedTraining(Phase):
    """A training phase that can run to a target (time-to-accuracy mode,
    bench.measurement.training_run): its steps train one model from initialization, and
    ``evaluate`` scores that model on the validation set between steps, on the clock."""

    steps_per_epoch: int = 1

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the model being trained now (the workload's
        ``eval_metrics``); a phase with a plateau schedule steps it here."""

    @abstractmethod
    def mean_train_loss(self) -> float:
        """Mean training loss of the steps since the previous call (NaN: none)."""

    def run_outcome(self, final: dict[str, float]) -> Outcome:
        """What the run reports once it stopped: the final evaluation's metrics and the
        details of the trained model (per-class figures, trainable parameters...)."""
        return Outcome(metrics=dict(final))

    def finish(self) -> Outcome:
        return self.run_outcome(self.evaluate())


# Distinct batches a timed inference step rotates through: different data each step (no
# cache-warm repeat of one batch), prepared before timing.
ROTATING_INPUTS = 8


class VariantInferPhase(Phase):
    """An inference phase timed through a ``bench.variants`` Variant: the variant's session
    around all steps, each step one prepared batch of ``ROTATING_INPUTS`` in turn."""

    variant: Variant

    def rotate(self, batches: list[tuple[Any, ...]]) -> None:
        """Prepare the timed batches (outside the timed region) and cycle through them."""
        self._batches = batches
        self.inputs = [self.variant.prepare(b) for b in batches]
        self._cycle = itertools.cycle(self.inputs)

    def prepare_serving(self, sizes: list[int]) -> None:
        # The first rows of each rotating batch, at every size the scenario can serve.
        self._served = {n: [self.variant.prepare(tuple(t[:n].contiguous() for t in b))
                            for b in self._batches] for n in sizes}
        self._turn = itertools.count()

    def serve(self, samples: int) -> object:
        sizes = self._served[samples]
        return self.variant.step(sizes[next(self._turn) % len(sizes)])

    def session(self) -> contextlib.AbstractContextManager[object]:
        return self.variant.session()

    def step(self) -> object:
        return self.variant.step(next(self._cycle))


class Workload(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    phases: ClassVar[tuple[str, ...]]
    # Whether prepare() applies Precision.prepare_model (fp8 swaps Linear layers).
    float8_training: ClassVar[bool] = False
    # Parameters of this workload's smallest meaningful case (a few seconds on a CPU): the
    # workload contract test (tests/workloads/test_workload_contract.py) runs every
    # workload with them.
    smoke_params: ClassVar[dict[str, object]] = {}
    # Axis values of that smallest case, where the defaults are a real case's size (a
    # generation of 64 tokens after 128).
    smoke_axes: ClassVar[dict[str, object]] = {}
    # Modules this workload's phases import lazily that a fork server may import once
    # before forking its workers (bench.launch.fork_server): pure imports that start no
    # thread and read no environment variable the worker sets first.
    warm_imports: ClassVar[tuple[str, ...]] = ()
    # Optional features (bench.extras) every case of this workload needs installed.
    extras: ClassVar[tuple[str, ...]] = ()
    # The model-parallel modes its model names a split for (tp: a tensor_parallel_plan;
    # pp: pipeline_stage), beyond the data-parallel modes every training phase takes.
    model_parallel: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def case_imports(cls, case) -> tuple[str, ...]:  # noqa: ANN001 - a CaseSpec
        """What ``case``'s worker imports lazily, for a fork server to import first: the
        workload's ``warm_imports``, or ``module@folder`` for a user's module that the
        worker imports with ``folder`` first on sys.path (bench.launch.fork_server)."""
        return cls.warm_imports

    @classmethod
    def case_extras(cls, case) -> tuple[str, ...]:  # noqa: ANN001 - a CaseSpec
        """The optional features (bench.extras) ``case`` needs: the workload's ``extras``."""
        return cls.extras

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        return common_axes(cls.phases)

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {}

    @classmethod
    def phase_axes(cls, phase: str) -> dict[str, Setting]:
        """The axes that mean something in ``phase``."""
        return {k: s for k, s in cls.axes().items() if s.phases is None or phase in s.phases}

    @classmethod
    def parity_reference(cls, phase: str) -> dict[str, Any]:
        """The variant axes of ``phase`` at their declared defaults: the case accuracy
        parity compares every variant with (fp32, eager, unquantized, unpruned)."""
        return {k: s.default for k, s in cls.phase_axes(phase).items() if s.variant}

    @classmethod
    @abstractmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        """Names of the task metrics this phase reports."""

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        """The metric accuracy parity compares, and whether higher is better."""
        return None

    @classmethod
    def eval_metrics(cls, phase: str) -> dict[str, bool]:
        """Metrics this phase evaluates while it trains (name -> higher is better): the
        metrics a time-to-accuracy target may name. Empty: no such mode; a phase that has
        them is an ``EvaluatedTraining``."""
        return {}

    @classmethod
    def watched_metric(cls, case: CaseSpec) -> tuple[str, bool]:
        """The metric an evaluated training run watches (its best value, early stopping,
        bench tune's intermediate values): the target's, else the task metric if it is
        evaluated, else the first evaluated metric."""
        spec = case.training
        if spec is not None and spec.target_metric:
            return spec.target_metric, spec.higher_is_better
        evaluated = cls.eval_metrics(case.phase)
        task = cls.task_metric(case.phase)
        if task and task[0] in evaluated:
            return task
        name = next(iter(evaluated))
        return name, evaluated[name]

    @classmethod
    def unsupported_reason(cls, case: CaseSpec) -> str | None:
        """Why this workload cannot run this case here (None: it can)."""
        return None

    @classmethod
    @abstractmethod
    def prepare(cls, case: CaseSpec, ctx: RunContext) -> Phase:
        """Build data, model and the step to time, inside the worker process."""
