"""gpt: a nanoGPT-style decoder trained for real on byte-level text every machine has.

Corpus: the Python standard library's own ``.py`` sources, read at run time (nothing is
downloaded or shipped). Files are shuffled with a fixed seed and taken until
``corpus_mib``; the first 10% of those bytes (whole files) are validation, the rest
training. The corpus differs between Python versions, so its size, file count and
sha256 are recorded with every case.

Train phase: one optimizer step (AdamW, ``accum_steps`` micro-batches of ``batch_size``
windows of the config's context). Infer phase: prefill, a forward over ``batch_size``
full-context windows with logits at every position (scoring). Validation loss is
reported in bits per byte (a token is a byte), on a model trained from a fixed seed for
exactly ``train_steps`` steps with the case's settings, not on the timed one.

Generate phase: the model trained as prefill's is (fp32, ``train_steps`` at
``train_batch_size``), then moved into a transformers GPT-2 with the same weights
(bench.workloads._gpt_hf) and run by the generate phase (bench.workloads._generate) as
any causal LM: prompts are windows of the validation bytes, perplexity is per byte on the
first ``perplexity_tokens`` of them (default 4,096) in windows of the context, and
``input_tokens + output_tokens`` must fit the config's context (learned positions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import math
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.torch_version import TorchVersion

from bench.measurement.flops import FlopCount, compute_dtype, count_flops
from bench.spec.axes import Setting
from bench.units import MAX_BATCH_SIZE, MAX_MEMORY_MIB, MAX_STEPS, MIB
from bench.variants.backends import BACKENDS, COMPILE_MODES, training_backend_axis
from bench.variants.parallel import (
    DEFAULT_TP_SIZE,
    PIPELINE_SCHEDULES,
    STAGES_PER_RANK,
    Pipeline,
    parallelize,
)
from bench.variants.precision import get_precision
from bench.workloads import register
from bench.workloads._generate import PHASE as GENERATE
from bench.workloads._generate import (
    GeneratePhase,
    HeldOutText,
    generation_axes,
    generation_unsupported,
    quality_params,
)
from bench.workloads._recipes import Schedule, build_optimizer, recipe_axes
from bench.workloads._training import (
    BatchStream,
    PipelineTrainer,
    Trainer,
    activation_bytes,
    memory_split,
    sum_over_batches,
)
from bench.workloads.base import (
    ROTATING_INPUTS,
    EvaluatedTraining,
    Outcome,
    Phase,
    RunContext,
    Workload,
    parallel_axes,
)
from bench.workloads.gpt_model import CONFIGS, GPT, analytic_flops_per_token, next_token_loss

CORPUS_SEED = 20261123
VAL_FRACTION = 0.1
TRAIN_WINDOWS = 4096  # distinct training windows the batch stream shuffles through
VAL_WINDOWS = 64

# nanoGPT's AdamW: weight decay on every matrix (dim >= 2: linear and embedding weights),
# none on biases and norm gains; beta2 0.95, as for language-model pre-training.
ADAMW_WEIGHT_DECAY = 0.1
ADAMW_BETAS = (0.9, 0.95)


@functools.cache
def load_corpus(corpus_mib: float) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """(train bytes, validation bytes, description) from the standard library sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    order = np.random.default_rng(CORPUS_SEED).permutation(len(files))
    chunks, total, limit = [], 0, int(corpus_mib * MIB)
    for i in order:
        data = files[i].read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    n_val_files = next(i for i, size in enumerate(itertools.accumulate(map(len, chunks)))
                       if size >= VAL_FRACTION * total) + 1
    val = b"".join(chunks[:n_val_files])
    train = b"".join(chunks[n_val_files:])
    digest = hashlib.sha256(val + train).hexdigest()
    info = {"source": f"Python {sys.version.split()[0]} standard library *.py under {root}",
            "files": len(chunks), "train_bytes": len(train), "val_bytes": len(val),
            "sha256": digest, "split": f"whole files, seed {CORPUS_SEED}, first "
                                        f"{VAL_FRACTION:.0%} of bytes validation"}
    return (np.frombuffer(train, dtype=np.uint8), np.frombuffer(val, dtype=np.uint8), info)


def windows(data: np.ndarray, count: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``count`` random windows of ``length`` + 1 bytes: inputs and next-byte targets."""
    starts = np.random.default_rng(seed).integers(0, len(data) - length - 1, size=count)
    block = np.stack([data[s:s + length + 1] for s in starts]).astype(np.int64)
    tokens = torch.from_numpy(block)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def bits_per_byte(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                  ctx: RunContext) -> float:
    total = sum_over_batches(model, x, y, batch_size, ctx.precision, ctx.device,
                             lambda logits, targets: float(next_token_loss(logits, targets))
                             * len(targets))
    return total / len(x) / math.log(2)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           ctx: RunContext) -> int:
    """Bytes autograd keeps for backward over one forward: what checkpointing trades."""
    return activation_bytes(model, lambda: next_token_loss(model(x), y), ctx.precision,
                            ctx.device)


def attention_kernels(model: nn.Module, x: torch.Tensor, ctx: RunContext) -> list[str]:
    """The aten kernels ``scaled_dot_product_attention`` dispatched to in one training-mode
    forward and backward of the eager model (flash, efficient, cudnn or math)."""
    from torch.utils._python_dispatch import TorchDispatchMode  # as FlopCounterMode is built

    class SeenOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    model.train()
    with SeenOps() as seen, ctx.precision.context(ctx.device):
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return sorted(n for n in seen.names if n.startswith("aten._scaled_dot_product"))


def host_syncs(step, device: str, steps: int) -> int | None:
    """Synchronizing CUDA calls (``.item()``, device-to-host copies, ...) the host made in
    ``steps`` steps, as torch.cuda.set_sync_debug_mode("warn") reports them; None off CUDA."""
    if device != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


# A tensor-parallel group larger than any config's head count cannot split it.
MAX_TP_SIZE = max(c.n_head for c in CONFIGS.values())
# Steps the host-sync check runs after timing (on CUDA).
SYNC_CHECK_STEPS = 4


class GPTPhase(Phase):
    sample_unit = "tokens"

    def __init__(self, case, ctx: RunContext) -> None:
        self.case, self.ctx = case, ctx
        a, p = case.axes, case.params
        self.cfg = CONFIGS[a["model"]]
        self.train_data, self.val_data, self.corpus = load_corpus(p["corpus_mib"])
        t = self.cfg.block_size
        self.x_train, self.y_train = (z.to(ctx.device) for z in
                                      windows(self.train_data, TRAIN_WINDOWS, t, seed=1))
        self.x_val, self.y_val = (z.to(ctx.device) for z in
                                  windows(self.val_data, VAL_WINDOWS, t, seed=2))
        torch.manual_seed(ctx.seed)
        self.model = GPT(self.cfg, checkpointing=a.get("checkpointing", False)).to(ctx.device)
        self.pipeline: Pipeline | None = None  # parallel = pp: this rank's stage
        self.precision_steps = ctx.precision.prepare_model(self.model)
        self.runnable = BACKENDS[a["backend"]].training_module(
            self.model, a.get("compile_mode", "default"))

    def _optimizer(self) -> torch.optim.Optimizer:
        """nanoGPT's AdamW (betas 0.9/0.95, weight decay on matrices only), or the recipe's
        optimizer over the same two groups. The prefill model trains with the default."""
        a, p = self.case.axes, self.case.params
        decay = [q for q in self._trained_module().parameters() if q.dim() >= 2]
        no_decay = [q for q in self._trained_module().parameters() if q.dim() < 2]
        groups = [{"params": decay, "weight_decay": a.get("weight_decay", ADAMW_WEIGHT_DECAY)},
                  {"params": no_decay, "weight_decay": 0.0}]
        name = a.get("optimizer", "adamw")
        if name != "adamw":
            return build_optimizer(name, groups, p["lr"], 0.0)
        return torch.optim.AdamW(groups, lr=p["lr"], betas=ADAMW_BETAS,
                                 fused=bool(a.get("fused_optimizer", False)))

    def step_recipe(self, optimizer: torch.optim.Optimizer, step) -> dict[str, object]:
        """What the timed step used: compiler, optimizer implementation, attention kernel,
        precision, and the host syncs it makes (a sync stalls the launch queue)."""
        a = self.case.axes
        mode = a.get("compile_mode", "default")
        defaults = optimizer.defaults
        impl = "fused" if defaults.get("fused") else \
            "foreach" if defaults.get("foreach") is not False else "for-loop"
        syncs = host_syncs(step, self.ctx.device, SYNC_CHECK_STEPS)
        return {
            "backend": "eager" if a["backend"] == "eager" else f"torch.compile(mode={mode!r})",
            "optimizer": f"{type(optimizer).__name__} ({impl})",
            "attention": attention_kernels(self.model, self.x_train[:1], self.ctx),
            "attention_method": "aten ops dispatched (TorchDispatchMode) in one training-mode "
                                "forward and backward (batch 1) of the eager model under "
                                "the case's precision",
            "precision": self.ctx.precision.method(),
            "host_syncs": (f"{syncs} in {SYNC_CHECK_STEPS} steps "
                           "(torch.cuda.set_sync_debug_mode warn, after timing)")
                          if syncs is not None else "not checked: no CUDA device",
        }

    def _reset_model(self, seed: int) -> None:
        """The model re-initialized from ``seed``, as every trainer starts. Across ranks a
        fresh one is built, initialized as one process would be, then wrapped or sharded
        (fsdp2 shards the parameters it is given: every rank's shard of the same init)."""
        ranks = self.ctx.ranks
        if not ranks.distributed:
            torch.manual_seed(seed)
            self.model.reset_parameters()
            return
        model = GPT(self.cfg, checkpointing=self.case.axes.get("checkpointing", False))
        model = model.to(self.ctx.device)
        torch.manual_seed(seed)
        model.reset_parameters()
        self.precision_steps = self.ctx.precision.prepare_model(model)
        self.model = model
        if ranks.mode == "pp":
            self.pipeline = Pipeline(model, ranks, self.ctx.device,
                                     self.case.axes["microbatches"],
                                     self.case.axes["pp_schedule"], next_token_loss)
            self.runnable = model  # evaluated whole, after gather_stages()
            return
        self.runnable = parallelize(model, ranks, self.ctx.device)

    def _trained_module(self) -> nn.Module:
        """What this rank trains: the model, or its pipeline stage."""
        return self.pipeline.module if self.pipeline is not None else self.model

    def pipeline_bubbles(self) -> list[float] | None:
        return self.pipeline.bubbles() if self.pipeline is not None else None

    def gather_stages(self) -> None:
        """Under pipeline parallelism, every stage's trained parameters into this rank's
        whole model, so it can be evaluated (a no-op otherwise)."""
        if self.pipeline is not None:
            self.pipeline.gather()

    def _trainer(self, seed: int, keep_losses: bool = False) -> Trainer:
        a = self.case.axes
        self._reset_model(seed)
        # Prefill's batch_size is an inference batch: its model trains at a fixed one.
        batch = a["batch_size"] if self.case.phase == "train" else \
            self.case.params["train_batch_size"]
        stream = BatchStream(self.x_train, self.y_train, batch, seed,
                             shard=self.ctx.ranks.data_shard)
        optimizer = self._optimizer()
        per_epoch = max(1, stream.batches_per_epoch // a.get("accum_steps", 1))
        schedule = Schedule(a.get("lr_schedule", "constant"), optimizer,
                            self.case.params["train_steps"], per_epoch, self.case.params["lr"],
                            higher_is_better=False)
        if self.pipeline is not None:
            return PipelineTrainer(self.pipeline, optimizer, stream, self.ctx.precision,
                                   self.ctx.device, schedule, keep_losses)
        return Trainer(self.runnable, optimizer, next_token_loss, stream,
                       a.get("accum_steps", 1), self.ctx.precision, self.ctx.device, schedule,
                       a.get("grad_clip", 0.0), keep_losses)

    def _trained(self) -> tuple[Trainer, list[float]]:
        """The fixed-seed model trained for exactly train_steps (timing never changes it)."""
        trainer = self._trainer(seed=self.ctx.seed + 2)
        steps = self.case.params["train_steps"]
        losses = [trainer.step() for _ in range(steps)]
        finite = torch.isfinite(torch.stack(losses))
        if not bool(finite.all()):
            trainer.first_nonfinite_step = int((~finite).nonzero()[0]) + 1
        every = max(1, steps // 20)
        curve = [float(torch.stack(losses[i:i + every]).mean()) for i in range(0, steps, every)]
        return trainer, curve

    def _outcome(self, trainer: Trainer, curve: list[float]) -> Outcome:
        self.gather_stages()
        val_bpb = bits_per_byte(self.runnable, self.x_val, self.y_val,
                                self.case.batch_size, self.ctx)
        details = {"corpus": self.corpus,
                   "config": {"name": self.case.axes["model"], **dataclasses.asdict(self.cfg)},
                   "train_steps": trainer.steps, "train_loss_curve": curve,
                   "loss_curve_every_steps": max(1, self.case.params["train_steps"] // 20),
                   "val_windows": len(self.x_val),
                   "first_nonfinite_step": trainer.first_nonfinite_step}
        if self.precision_steps:
            details["precision_model"] = self.precision_steps
        return Outcome(metrics={"val_bpb": val_bpb, "final_train_loss": curve[-1]},
                       details=details)


class GPTTrain(GPTPhase, EvaluatedTraining):
    def __init__(self, case, ctx: RunContext) -> None:
        super().__init__(case, ctx)
        self.trainer = self._trainer(seed=ctx.seed + 1, keep_losses=case.training is not None)
        self.samples_per_step = self.trainer.samples_per_step * self.cfg.block_size
        self.steps_per_epoch = max(1, self.trainer.stream.batches_per_epoch
                                   // case.axes["accum_steps"])
        self.last_train_loss = math.nan
        self.step_description = (
            "one optimizer step: accum_steps micro-batches of batch_size x "
            f"{self.cfg.block_size} tokens (forward, cross-entropy, backward), then AdamW; "
            f"batches drawn from {TRAIN_WINDOWS} windows already on the device")

    def step(self) -> object:
        return self.trainer.step()

    def flop_count(self) -> FlopCount | None:
        a = self.case.axes
        micro = self.x_train[:a["batch_size"]], self.y_train[:a["batch_size"]]

        def one_step() -> None:  # the eager model: FLOPs of the math, not of a compiler
            self.model.train()
            for _ in range(a.get("accum_steps", 1)):
                with self.ctx.precision.context(self.ctx.device):
                    loss = next_token_loss(self.model(micro[0]), micro[1])
                loss.backward()
            self.model.zero_grad(set_to_none=True)

        per_token, formula = analytic_flops_per_token(self.model, self.cfg.block_size, True)
        counted, analytic = count_flops(one_step), per_token * self.samples_per_step
        if a.get("checkpointing"):
            formula += "; checkpointing recomputes each block's forward, which the counter " \
                       "sees and the formula does not"
        if self.pipeline is not None:
            # Every rank holds the whole model: its FLOPs over the batch, counted outside the
            # pipeline, split over the ranks (their mean: the first stage has the
            # embeddings, the last the head).
            world = self.ctx.ranks.world_size
            counted, analytic = counted / world, analytic / world
            formula = f"({formula}) x tokens per step / {world} ranks (per device: the mean " \
                      "over the stages)"
        return FlopCount(counted, analytic, formula, compute_dtype(a["precision"]))

    def evaluate(self) -> dict[str, float]:
        self.gather_stages()
        bpb = bits_per_byte(self.runnable, self.x_val, self.y_val, self.case.batch_size,
                            self.ctx)
        self.trainer.scheduler.after_eval(bpb)
        return {"val_bpb": bpb}

    def mean_train_loss(self) -> float:
        self.last_train_loss = self.trainer.mean_loss()
        return self.last_train_loss

    def _saved_activations(self) -> int:
        micro = self.x_train[:self.case.batch_size], \
            self.y_train[:self.case.batch_size]
        if self.pipeline is not None:
            return self._stage_activations(*micro)
        return saved_activation_bytes(self.model, *micro, self.ctx)

    def _stage_activations(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Bytes this rank's stages save for backward over one micro-batch each: a stage's
        input made here by the earlier stages (no communication), its output summed as a
        stand-in loss where the stage has no head."""
        pipeline = self.pipeline
        size = max(1, len(x) // pipeline.microbatches)
        total = 0
        for index in pipeline.own:
            hidden = x[:size]
            with torch.no_grad():
                for earlier in pipeline.stages[:index]:
                    hidden = earlier(hidden)
            stage = pipeline.stages[index]

            def forward_loss(stage=stage, hidden=hidden) -> torch.Tensor:
                out = stage(hidden)
                return next_token_loss(out, y[:size]) if stage.last else out.float().sum()

            total += activation_bytes(stage, forward_loss, self.ctx.precision, self.ctx.device)
        return total

    def run_outcome(self, final: dict[str, float]) -> Outcome:
        details = {"corpus": self.corpus, "train_steps": self.trainer.steps,
                   "config": {"name": self.case.axes["model"], **dataclasses.asdict(self.cfg)},
                   "val_windows": len(self.x_val),
                   "memory_split": memory_split(self._trained_module(), self.trainer.optimizer,
                                                self._saved_activations())}
        return Outcome(metrics={**final, "final_train_loss": self.last_train_loss},
                       details=details)

    def finish(self) -> Outcome:
        saved = self._saved_activations()
        recipe = self.step_recipe(self.trainer.optimizer, self.step)
        trainer, curve = self._trained()
        outcome = self._outcome(trainer, curve)
        outcome.details["memory_split"] = memory_split(self._trained_module(),
                                                       trainer.optimizer, saved)
        outcome.details["step_recipe"] = recipe
        if self.pipeline is not None:
            outcome.details["pipeline"] = {
                "stages": len(self.pipeline.stages), "microbatches": self.pipeline.microbatches,
                "schedule": self.pipeline.schedule_name,
                "blocks": [len(s.blocks) for s in self.pipeline.stages],
                "bubble_theoretical": self.pipeline.theoretical_bubble,
                "stages_per_rank": self.pipeline.per_rank,
                "bubble_formula": "(ranks - 1) / (stages_per_rank x microbatches + ranks - 1)",
                "memory_split": "this rank's stages (rank 0: the embeddings and its blocks)"}
        return outcome


class GPTInfer(GPTPhase):
    def __init__(self, case, ctx: RunContext) -> None:
        super().__init__(case, ctx)
        batch = case.batch_size
        pool = windows(self.val_data, ROTATING_INPUTS * batch, self.cfg.block_size, seed=3)[0]
        self.inputs = [pool[i * batch:(i + 1) * batch].to(ctx.device)
                       for i in range(ROTATING_INPUTS)]
        self._cycle = itertools.cycle(self.inputs)
        self.samples_per_step = batch * self.cfg.block_size
        self.step_description = (
            f"prefill: one forward over batch_size x {self.cfg.block_size} tokens, logits "
            "at every position; inference_mode and precision entered once around all "
            f"steps; batches rotate through {ROTATING_INPUTS} distinct inputs")
        self.model.eval()

    def session(self) -> contextlib.AbstractContextManager[object]:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self.ctx.precision.context(self.ctx.device))
        return stack

    def step(self) -> object:
        return self.runnable(next(self._cycle))

    def flop_count(self) -> FlopCount:
        def forward() -> None:
            with torch.inference_mode(), self.ctx.precision.context(self.ctx.device):
                self.model(self.inputs[0])

        per_token, formula = analytic_flops_per_token(self.model, self.cfg.block_size, False)
        return FlopCount(count_flops(forward), per_token * self.samples_per_step, formula,
                         compute_dtype(self.case.precision))

    def finish(self) -> Outcome:
        trainer, curve = self._trained()
        return self._outcome(trainer, curve)


@register
class Gpt(Workload):
    name = "gpt"
    smoke_params = {"train_steps": 4, "corpus_mib": 0.2, "train_batch_size": 4}
    description = "nanoGPT-style decoder, byte-level, trained on the Python standard " \
                  "library's sources; tokens/s, FLOPs, MFU, memory split, val bits/byte"
    phases = ("train", "infer", GENERATE)
    float8_training = True
    model_parallel = ("tp", "pp", "fsdp2_tp")  # GPT.tensor_parallel_plan, .pipeline_stage
    smoke_axes = {"input_tokens": 16, "output_tokens": 4}

    @classmethod
    def case_extras(cls, case) -> tuple[str, ...]:  # noqa: ANN001 - a CaseSpec
        return ("hf",) if case.phase == GENERATE else ()  # GPT-2 generates (transformers)

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        axes = super().axes()
        axes["batch_size"] = Setting("batch_size", int, 8, minimum=1, maximum=MAX_BATCH_SIZE,
                                     help="sequences per micro-batch")
        axes.update({
            "model": Setting("model", str, "tiny", choices=tuple(CONFIGS),
                             help="named config: " + ", ".join(
                                 f"{n} ({c.n_layer}L d{c.n_embd} T{c.block_size})"
                                 for n, c in CONFIGS.items())),
            "backend": training_backend_axis(),
            "checkpointing": Setting("checkpointing", bool, False, phases=("train",),
                                     help="activation checkpointing per block"),
            "fused_optimizer": Setting("fused_optimizer", bool, False, phases=("train",),
                                       help="AdamW(fused=True) instead of foreach"),
            "compile_mode": Setting("compile_mode", str, "default", choices=COMPILE_MODES,
                                    help="torch.compile's mode (backend=compile only)"),
            **recipe_axes("adamw", None, dropout=False, weight_decay=ADAMW_WEIGHT_DECAY),
            **parallel_axes(),
            "microbatches": Setting("microbatches", int, 4, minimum=1, maximum=MAX_BATCH_SIZE,
                                    phases=("train",),
                                    help="parallel=pp: micro-batches each batch is split "
                                         "into, flowing through the stages"),
            "tp_size": Setting("tp_size", int, DEFAULT_TP_SIZE, minimum=1, maximum=MAX_TP_SIZE,
                               phases=("train",),
                               help="parallel=fsdp2_tp: ranks in each tensor-parallel group "
                                    "(the mesh's inner dimension); world_size / tp_size "
                                    "groups shard with fsdp2 and split the batch"),
            "sequence_parallel": Setting("sequence_parallel", bool, False, phases=("train",),
                                         help="parallel=tp or fsdp2_tp: the residual stream "
                                              "and the norms split along the sequence "
                                              "(all-gather into attention and MLP, "
                                              "reduce-scatter out of them)"),
            "pp_schedule": Setting("pp_schedule", str, "1f1b", choices=tuple(PIPELINE_SCHEDULES),
                                   phases=("train",),
                                   help="parallel=pp: torch.distributed.pipelining's "
                                        "ScheduleGPipe, Schedule1F1B or "
                                        "ScheduleInterleaved1F1B (two stages per rank)"),
        })
        # The generate phase's axes; backend and compile_mode are gpt's own (every phase).
        generation = generation_axes()
        generation["input_tokens"] = dataclasses.replace(generation["input_tokens"],
                                                         default=48)
        generation["output_tokens"] = dataclasses.replace(generation["output_tokens"],
                                                          default=16)
        axes.update({k: v for k, v in generation.items() if k not in axes})
        return axes

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {
            "train_steps": Setting("train_steps", int, 200, minimum=1, maximum=MAX_STEPS,
                                   help="steps of the fixed-seed run validation is measured on"),
            "lr": Setting("lr", float, 1e-3, minimum=0),
            "train_batch_size": Setting("train_batch_size", int, 16, minimum=1,
                                        phases=("infer", GENERATE),
                                        help="batch of the run prefill's and generate's "
                                             "model is trained by"),
            "corpus_mib": Setting("corpus_mib", float, 4.0, minimum=0.1, maximum=MAX_MEMORY_MIB,
                                  help="MiB of standard-library source to read"),
            **quality_params(),
        }

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        if phase == GENERATE:
            return ("perplexity", "greedy_agreement", "greedy_first_divergence")
        return ("val_bpb", "final_train_loss")

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        return ("perplexity", False) if phase == GENERATE else ("val_bpb", False)

    @classmethod
    def eval_metrics(cls, phase: str) -> dict[str, bool]:
        return {"val_bpb": False} if phase == "train" else {}

    @classmethod
    def unsupported_reason(cls, case) -> str | None:
        if case.phase == GENERATE:
            return _generate_unsupported(case)
        mode = case.axes.get("compile_mode", "default")
        if mode != "default" and case.backend != "compile":
            return f"compile_mode={mode} is torch.compile's: it needs backend=compile"
        if case.axes.get("model") == "gpt2-124m" and case.device == "cpu":
            return "gpt2-124m is a GPU config (one step at batch 8 takes minutes on a CPU); " \
                   "use model=tiny or small on CPU"
        heads, mode = CONFIGS[case.axes["model"]].n_head, case.axes.get("parallel")
        split = {"tp": ("world_size", case.axes.get("world_size", 1)),
                 "fsdp2_tp": ("tp_size", case.axes.get("tp_size", DEFAULT_TP_SIZE))}
        if mode in split and heads % split[mode][1]:
            axis, ranks = split[mode]
            return f"parallel={mode} splits the {heads} attention heads over the ranks: " \
                   f"{axis} {ranks} does not divide them"
        if mode in split and case.axes.get("checkpointing"):
            return f"parallel={mode} with activation checkpointing is not built"
        if case.axes.get("sequence_parallel"):
            return _sequence_parallel_unsupported(case, mode, split)
        if case.axes.get("parallel") == "pp":
            return _pipeline_unsupported(case)
        return None

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        if case.phase == GENERATE:
            return gpt_generate_phase(case, ctx)
        return GPTTrain(case, ctx) if case.phase == "train" else GPTInfer(case, ctx)


# Bytes of validation text perplexity reads unless perplexity_tokens says otherwise.
GENERATE_PERPLEXITY_BYTES = 4096


def _sequence_parallel_unsupported(case, mode: str, split: dict) -> str | None:
    if mode not in split:
        return f"sequence_parallel splits tensor-parallel ranks' tokens: parallel={mode} " \
               f"has none (valid: {', '.join(split)})"
    context, (axis, ranks) = CONFIGS[case.axes["model"]].block_size, split[mode]
    if context % ranks:
        return f"sequence_parallel splits the context of {context} tokens over the " \
               f"ranks: {axis} {ranks} does not divide it"
    return None


# The first torch seen running a rank's two interleaved stages over gloo (2.11 was not).
GLOO_LOCAL_STAGES_TORCH = "2.13"


def _pipeline_unsupported(case) -> str | None:
    a = case.axes
    blocks, world, micro = CONFIGS[a["model"]].n_layer, a["world_size"], a["microbatches"]
    per_rank = STAGES_PER_RANK.get(a["pp_schedule"], 1)
    if world * per_rank > blocks:
        return f"parallel=pp puts whole blocks in each stage: {blocks} blocks make at most " \
               f"{blocks} stages, not world_size {world} x {per_rank} stage(s) per rank " \
               f"(pp_schedule={a['pp_schedule']})"
    if per_rank > 1 and world == 1 and case.device == "cpu" and \
            TorchVersion(torch.__version__) < GLOO_LOCAL_STAGES_TORCH:
        return f"pp_schedule={a['pp_schedule']} on one rank passes activations between its " \
               f"own stages through gloo, which torch {torch.__version__} refuses (a send to " \
               f"itself: 'Pair is not connected'; torch {GLOO_LOCAL_STAGES_TORCH} runs it): " \
               "run it at world_size 2 or more"
    rounds = max(1, micro // world)
    if per_rank > 1 and micro % rounds:
        return f"pp_schedule={a['pp_schedule']} runs microbatches in rounds of world_size: " \
               f"{micro} micro-batches do not split into {rounds} equal rounds"
    if a["batch_size"] % micro:
        return f"parallel=pp splits batch_size {a['batch_size']} into {micro} equal " \
               "micro-batches: make it a multiple"
    for axis, off in (("accum_steps", 1), ("grad_clip", 0.0), ("checkpointing", False)):
        if a.get(axis, off) != off:
            return f"parallel=pp with {axis}={a[axis]} is not built (micro-batches are its " \
                   "accumulation)"
    return None


def _generate_unsupported(case) -> str | None:
    cfg = CONFIGS[case.axes["model"]]
    context = int(case.axes["input_tokens"]) + int(case.axes["output_tokens"])
    if context > cfg.block_size:
        return (f"input_tokens + output_tokens = {context} exceeds the {case.axes['model']} "
                f"config's context of {cfg.block_size} (learned positions)")
    if case.axes["model"] == "gpt2-124m" and case.device == "cpu":
        return "gpt2-124m is a GPU config; use model=tiny or small on CPU"
    return generation_unsupported(case)


def gpt_generate_phase(case, ctx: RunContext) -> Phase:
    """The generate phase on the gpt model: trained in fp32 as prefill's model is, then a
    transformers GPT-2 with its weights, the variant applied by the generate phase."""
    # transformers on use: gpt's train and infer workers never import it.
    from bench.workloads._gpt_hf import ByteTokenizer, to_transformers
    from bench.workloads._llm import LoadedModel

    fp32 = dataclasses.replace(ctx, precision=get_precision("fp32"))
    trainer_case = dataclasses.replace(case, axes={**case.axes, "backend": "eager",
                                                   "compile_mode": "default"})
    source = GPTInfer(trainer_case, fp32)
    trainer, curve = source._trained()
    val_bpb = bits_per_byte(source.model, source.x_val, source.y_val, case.batch_size, fp32)
    limit = int(case.params.get("perplexity_tokens") or GENERATE_PERPLEXITY_BYTES)
    text = HeldOutText(torch.from_numpy(source.val_data[:limit].astype(np.int64)),
                       "the gpt corpus's validation bytes", source.cfg.block_size)
    name = case.axes["model"]
    loaded = LoadedModel(
        ByteTokenizer(), to_transformers(source.model),
        source=f"gpt {name} ({source.cfg.n_layer} layers, d{source.cfg.n_embd}, context "
               f"{source.cfg.block_size}), byte-level",
        origin=f"trained in this worker: {trainer.steps} AdamW steps at batch "
               f"{case.params['train_batch_size']} from seed {ctx.seed + 2} (val "
               f"{val_bpb:.3f} bits/byte, final train loss {curve[-1]:.3f}), as a "
               "transformers GPT2LMHeadModel with the same weights")
    return GeneratePhase(case, ctx, loaded, f"gpt {name}", text)
