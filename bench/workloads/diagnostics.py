"""Diagnostic workloads that check the harness itself, not a model.

``sleep`` takes a known time per step, so the timing path can be checked against
truth. ``fault`` misbehaves on purpose (aborts, hangs, exhausts memory, raises) so
the isolation layer can be checked to turn each fault into a case status; its train
phase trains a tiny linear model across ranks (``parallel``) and misbehaves on one rank
(``fault_rank``) only. ``ballast``
holds a known amount of memory per sample, so the max-batch search has a known answer.
"""

from __future__ import annotations

import os
import time

from bench.spec.axes import Setting
from bench.units import MAX_BATCH_SIZE, MIB
from bench.workloads import register
from bench.workloads.base import (
    Outcome,
    Phase,
    RunContext,
    Workload,
    parallel_axes,
    serving_axes,
)

_CPU_ONLY = {"device": Setting("device", str, "cpu", choices=("cpu",))}


class SleepPhase(Phase):
    step_description = "time.sleep((sleep_ms + per_sample_ms x batch_size) / 1000)"

    def __init__(self, seconds: float, per_sample_s: float = 0.0, batch: int = 1) -> None:
        self.seconds, self.per_sample_s, self.samples_per_step = seconds, per_sample_s, batch

    def service_s(self, samples: int) -> float:
        """The known time of a batch of ``samples``."""
        return self.seconds + self.per_sample_s * samples

    def step(self) -> object:
        time.sleep(self.service_s(self.samples_per_step))
        return None

    def serve(self, samples: int) -> object:
        time.sleep(self.service_s(samples))
        return None

    def finish(self) -> Outcome:
        return Outcome(metrics={"expected_step_s": self.service_s(self.samples_per_step)})


@register
class Sleep(Workload):
    name = "sleep"
    smoke_params = {"sleep_ms": 1.0}
    description = "sleeps a known time per step: checks the timer against truth"
    phases = ("infer",)

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        return {**_CPU_ONLY, "batch_size": Setting("batch_size", int, 1, minimum=1,
                                                           maximum=MAX_BATCH_SIZE),
                **serving_axes()}

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {"sleep_ms": Setting("sleep_ms", float, 10.0, minimum=0,
                                    help="the time of every batch"),
                "per_sample_ms": Setting("per_sample_ms", float, 0.0, minimum=0,
                                         help="added per sample of the batch")}

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        return ("expected_step_s",)

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        # Cases written before batch_size and per_sample_ms existed (an older case file)
        # mean batches of one, nothing per sample.
        return SleepPhase(case.params["sleep_ms"] / 1000,
                          case.params.get("per_sample_ms", 0.0) / 1000,
                          case.batch_size or 1)


class FaultPhase(Phase):
    step_description = "misbehaves on purpose after `after_steps` normal steps"

    def __init__(self, fault: str, after_steps: int, chunk_mib: int) -> None:
        self.fault, self.after_steps, self.chunk_mib = fault, after_steps, chunk_mib
        self.steps = 0
        self.hoard: list[bytearray] = []

    def step(self) -> object:
        self.steps += 1
        if self.steps <= self.after_steps or self.fault == "none":
            time.sleep(0.001)
            return None
        if self.fault == "abort":
            os.abort()
        if self.fault == "hang":
            while True:
                time.sleep(1)
        if self.fault == "memory":
            # A runaway allocation: grows until something stops it. bytearray pages are
            # written (zeroed), so they count in RSS at once.
            while True:
                self.hoard.append(bytearray(self.chunk_mib * MIB))
                time.sleep(0.01)
        if self.fault == "raise":
            raise RuntimeError("injected failure")
        raise AssertionError(self.fault)

    def finish(self) -> Outcome:
        return Outcome(metrics={})


class FaultTrainPhase(FaultPhase):
    step_description = "one SGD step of a 16-8-1 MLP on batch_size random rows; " \
                       "misbehaves after `after_steps` steps on rank `fault_rank`"

    def __init__(self, case, ctx: RunContext) -> None:
        import torch  # kept out of start-up (the infer phase needs none)

        from bench.variants.parallel import Pipeline, parallelize
        from bench.workloads._training import BatchStream, PipelineTrainer, Trainer

        super().__init__(case.axes["fault"], case.params["after_steps"],
                         case.params["chunk_mib"])
        self.faulty = ctx.ranks.rank == case.params["fault_rank"]
        torch.manual_seed(ctx.seed)
        x, y = torch.randn(4096, 16), torch.randn(4096, 1)
        stream = BatchStream(x, y, case.batch_size, ctx.seed, shard=ctx.ranks.data_shard)
        loss = torch.nn.functional.mse_loss
        if ctx.ranks.mode == "pp":  # a fault in one stage strands the other in its recv
            pipeline = Pipeline(_split_mlp(), ctx.ranks, ctx.device, PIPELINE_MICROBATCHES,
                                "1f1b", loss)
            optimizer = torch.optim.SGD(pipeline.module.parameters(), lr=0.01)
            self.trainer = PipelineTrainer(pipeline, optimizer, stream, ctx.precision,
                                           ctx.device)
        else:
            model = parallelize(_split_mlp(), ctx.ranks, ctx.device)
            self.trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loss,
                                   stream, 1, ctx.precision, ctx.device)
        self.samples_per_step = self.trainer.samples_per_step

    def step(self) -> object:
        if self.faulty:
            super().step()
        return self.trainer.step()


# parallel = pp: each batch in this many micro-batches through the fault MLP's stages.
PIPELINE_MICROBATCHES = 2


def _split_mlp():  # noqa: ANN202 - a torch module; torch is imported on use
    """A 16-8-1 MLP that names its tensor-parallel plan: the hidden layer split
    column-wise, the output layer row-wise (a fault in one rank then strands the other in
    the all-reduce, as in a real model's)."""
    import torch  # kept out of start-up (the infer phase needs none)

    class SplitMLP(torch.nn.Sequential):
        def tensor_parallel_plan(self, world: int) -> dict[str, object]:
            # On use: only a tensor-parallel case loads torch.distributed.tensor.
            from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

            return {"0": ColwiseParallel(), "2": RowwiseParallel()}

        def pipeline_stage(self, stage: int, stages: int) -> torch.nn.Module:
            if stages > 2:
                raise ValueError(f"the fault MLP makes at most 2 stages, not {stages}")
            return self if stages == 1 else self[:2] if stage == 0 else self[2:]

    return SplitMLP(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


@register
class Fault(Workload):
    name = "fault"
    description = "injects a crash, hang, memory blow-up or exception: checks isolation"
    phases = ("infer", "train")
    model_parallel = ("tp", "pp")  # its MLP's tensor_parallel_plan and pipeline_stage

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        axes = dict(_CPU_ONLY)
        axes["fault"] = Setting("fault", str, "none",
                                choices=("none", "abort", "hang", "memory", "raise"))
        axes["batch_size"] = Setting("batch_size", int, 8, minimum=1, maximum=MAX_BATCH_SIZE,
                                     phases=("train",))
        return {**axes, **parallel_axes()}

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {"after_steps": Setting("after_steps", int, 2, minimum=0),
                "chunk_mib": Setting("chunk_mib", int, 64, minimum=1),
                "fault_rank": Setting("fault_rank", int, 0, minimum=0, phases=("train",),
                                      help="the rank that misbehaves (train phase)")}

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        return ()

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        if case.phase == "train":
            return FaultTrainPhase(case, ctx)
        return FaultPhase(case.axes["fault"], case.params["after_steps"],
                          case.params["chunk_mib"])


class BallastPhase(Phase):
    step_description = "time.sleep(0.001 + per_sample_ms x batch_size / 1000) while holding " \
                       "batch_size x mib_per_sample of memory"

    def __init__(self, batch_size: int, mib_per_sample: int, per_sample_s: float = 0.0) -> None:
        # Written pages (bytearray zeroes them), so all of it is resident at once.
        self.ballast = [bytearray(mib_per_sample * MIB) for _ in range(batch_size)]
        self.step_s = 0.001 + per_sample_s * batch_size
        self.samples_per_step = batch_size

    def step(self) -> object:
        time.sleep(self.step_s)
        return None

    def finish(self) -> Outcome:
        return Outcome(metrics={})


@register
class Ballast(Workload):
    name = "ballast"
    smoke_params = {"mib_per_sample": 1}
    description = "holds a known amount of memory per sample: checks the max-batch search"
    phases = ("infer",)

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        axes = dict(_CPU_ONLY)
        axes["batch_size"] = Setting("batch_size", int, 1, minimum=1, maximum=MAX_BATCH_SIZE)
        return axes

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {"mib_per_sample": Setting("mib_per_sample", int, 256, minimum=1),
                "per_sample_ms": Setting("per_sample_ms", float, 0.0, minimum=0,
                                         help="step time added per sample of the batch")}

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        return ()

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        return BallastPhase(case.batch_size, case.params["mib_per_sample"],
                            case.params.get("per_sample_ms", 0.0) / 1000)
