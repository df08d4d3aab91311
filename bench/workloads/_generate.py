"""The generate phase: greedy text generation by a causal LM, one call timed per token.

What a case runs is what a user's ``model.generate`` runs: transformers' greedy decoding,
``max_new_tokens = min_new_tokens = output_tokens`` (every call makes exactly that many
tokens, so runs compare; the end-of-sequence token is held back until then), on
``batch_size`` prompts of exactly ``input_tokens`` tokens each (windows of the shipped
text, so no padding). A streamer's ``put`` marks each step's new tokens: transformers hands
it the tokens on the host, so on CUDA the step's kernels have finished by then.

The variant axes, applied to the fp32 model in this order:
- ``precision``: ``*_cast`` casts the weights (``model.to``); ``bf16``/``fp16`` autocast;
- ``quantization`` (torchao ``quantize_`` on every Linear but the output head, which holds
  the tied embedding and stays, as transformers' ``TorchAoConfig`` leaves it by default):
  ``int8_weight_only`` (int8 weights, per channel, dequantized in the matmul),
  ``int4_weight_only`` (asymmetric, groups of 32; on CPU torchao 0.18 has no packed int4
  kernel in its wheel, so its int4 values are stored unpacked in int8,
  ``IntxWeightOnlyConfig``: the memory is int8's), ``int8_dynamic`` (int8 weights and
  activations quantized per token);
- ``attention``: ``sdpa`` or ``eager`` (transformers' attention implementations);
- ``kv_cache``: ``dynamic`` (grows per token) or ``static`` (allocated once for input +
  output tokens);
- ``backend``: ``eager``, or ``compile``: transformers compiles the decode step's forward
  with ``torch.compile`` (``CompileConfig``: fullgraph, static shapes, ``compile_mode``) on
  the static cache; the prefill runs uncompiled, as in transformers.

Quality, next to speed (``finish``):
- perplexity on the shipped sentences (bench/workloads/data: the paraphrase pairs and the
  calibration sentences, joined as one text; its first ``perplexity_tokens``, default all),
  in non-overlapping windows of
  ``PERPLEXITY_WINDOW`` tokens: exp(mean negative log-likelihood per predicted token);
- greedy agreement with the fp32 eager model (dynamic cache, sdpa): ``agreement_prompts``
  (default ``AGREEMENT_PROMPTS``) prompts of ``AGREEMENT_PROMPT_TOKENS`` tokens,
  ``AGREEMENT_NEW_TOKENS`` new tokens each;
  the share of positions whose token equals the reference's, and the mean position of the
  first differing token (``AGREEMENT_NEW_TOKENS`` when none differs). The reference tokens
  are generated in this worker, before the variant is applied. A compiled variant's
  quality is its weights' run eager: perplexity calls the forward, and the agreement
  generation runs with compilation off (another compile for its shapes, for numerics
  torch.compile means to keep).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bench.measurement.generation import GenerationCall, kv_cache_bytes
from bench.spec.axes import Setting
from bench.spec.model import CLOSED_LOOP
from bench.variants import VariantNotApplied
from bench.variants.variant import serialized_bytes
from bench.workloads.base import Outcome, Phase, RunContext, serving_axes
from bench.workloads.hf import read_lines

if TYPE_CHECKING:
    from bench.spec.model import CaseSpec
    from bench.workloads._llm import LoadedModel

PHASE = "generate"
PERPLEXITY_WINDOW = 256
AGREEMENT_PROMPTS = 8
AGREEMENT_PROMPT_TOKENS = 32
AGREEMENT_NEW_TOKENS = 32
GENERATION_PRECISIONS = ("fp32", "bf16_cast", "fp16_cast", "bf16", "fp16")
QUANTIZATIONS = ("none", "int8_weight_only", "int4_weight_only", "int8_dynamic")
KV_CACHES = ("dynamic", "static")
ATTENTIONS = ("sdpa", "eager")
BACKENDS = ("eager", "compile")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def generation_axes() -> dict[str, Setting]:
    """The generate phase's axes beyond device, precision, batch size and threads."""
    only = (PHASE,)
    return {
        "input_tokens": Setting("input_tokens", int, 128, minimum=1, maximum=32768,
                                phases=only, help="prompt tokens per sequence"),
        "output_tokens": Setting("output_tokens", int, 64, minimum=1, maximum=32768,
                                 phases=only, help="new tokens per sequence (greedy, exactly "
                                                   "this many)"),
        "kv_cache": Setting("kv_cache", str, "dynamic", choices=KV_CACHES, phases=only,
                            variant=True, help="dynamic: grows per token; static: allocated "
                                               "once for input + output tokens"),
        "attention": Setting("attention", str, "sdpa", choices=ATTENTIONS, phases=only,
                             variant=True, help="transformers' attention implementation"),
        "backend": Setting("backend", str, "eager", choices=BACKENDS, phases=only,
                           variant=True, help="eager, or compile: the decode step's forward "
                                              "through torch.compile (static cache only)"),
        "compile_mode": Setting("compile_mode", str, "default", choices=COMPILE_MODES,
                                phases=only, variant=True,
                                help="torch.compile's mode where backend=compile"),
        "quantization": Setting("quantization", str, "none", choices=QUANTIZATIONS,
                                phases=only, variant=True,
                                help="torchao: int8 or int4 weight-only, or int8 dynamic "
                                     "(weights and activations)"),
        **serving_axes(only),
    }


def quality_params() -> dict[str, Setting]:
    """How much text the quality figures read (the defaults: all of it)."""
    only = (PHASE,)
    return {
        "perplexity_tokens": Setting("perplexity_tokens", int, 0, minimum=0, phases=only,
                                     help="shipped tokens perplexity is measured on (0: all, "
                                          "about 3,000)"),
        "agreement_prompts": Setting("agreement_prompts", int, AGREEMENT_PROMPTS, minimum=1,
                                     maximum=256, phases=only,
                                     help="prompts greedy agreement with fp32 is measured on"),
    }


def generation_unsupported(case: CaseSpec) -> str | None:
    """Why a generate case cannot run (None: it can)."""
    a = case.axes
    if case.precision not in GENERATION_PRECISIONS:
        return f"precision {case.precision} is not built for generation (valid: " \
               f"{', '.join(GENERATION_PRECISIONS)})"
    if case.device == "cpu" and case.precision in ("fp16", "fp16_cast") and \
            a.get("backend") == "compile":
        return "fp16 compiled generation is not supported on CPU (inductor has no fp16 CPU " \
               "kernels worth timing): use bf16_cast"
    if a.get("backend") == "compile" and a.get("kv_cache") != "static":
        return "backend=compile needs kv_cache=static (a dynamic cache changes shape every " \
               "token, so each step would recompile)"
    if a.get("backend") != "compile" and a.get("compile_mode", "default") != "default":
        return "compile_mode applies only to backend=compile"
    if a.get("quantization", "none") != "none" and case.precision not in ("fp32", "bf16_cast"):
        return f"torchao quantization here starts from fp32 or bf16_cast weights, not " \
               f"{case.precision}"
    return _served_unsupported(case)


def _served_unsupported(case: CaseSpec) -> str | None:
    if case.scenario == CLOSED_LOOP:
        return None
    if int(case.axes["output_tokens"]) < 2:
        return "a served generate case needs output_tokens >= 2 (LoadGen's TPOT divides by " \
               "tokens - 1)"
    spec = case.serving
    if case.scenario == "server" and (spec is None or not spec.has_token_bounds):
        return "scenario=server on the generate phase needs serving.ttft_bound_ms and " \
               "serving.tpot_bound_ms (the TTFT and TPOT bounds LoadGen holds the server to)"
    return None


def held_out_text() -> str:
    """The shipped English text perplexity is measured on (this project's sentences)."""
    sentences = [part for line in read_lines("minilm_pairs.tsv") for part in line.split("\t")]
    return " ".join(sentences + read_lines("minilm_calibration.txt"))


def token_windows(ids: torch.Tensor, count: int, length: int, stride: int) -> torch.Tensor:
    """``count`` windows of ``length`` token ids, ``stride`` apart, the text cycled where it
    runs out (a 1-D tensor in, count x length out)."""
    needed = (count - 1) * stride + length
    repeats = -(-needed // ids.numel())
    source = ids.repeat(repeats)
    return torch.stack([source[i * stride:i * stride + length] for i in range(count)])


def perplexity(model: Any, ids: torch.Tensor, window: int = PERPLEXITY_WINDOW,
               device: str = "cpu") -> tuple[float, int]:
    """exp(mean negative log-likelihood) of ``ids`` (1-D) in non-overlapping windows, and
    the number of tokens predicted (each window's first token has no context, so it is not
    predicted)."""
    total_nll, predicted = 0.0, 0
    with torch.inference_mode():
        for start in range(0, ids.numel() - 1, window):
            chunk = ids[start:start + window].unsqueeze(0).to(device)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[0, :-1], chunk[0, 1:], reduction="sum")
            total_nll += float(nll)
            predicted += chunk.shape[1] - 1
    return math.exp(total_nll / predicted), predicted


def greedy_agreement(reference: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """Share of positions whose token equals the reference's, and the mean position of the
    first differing token (the row length when none differs), over rows of new tokens."""
    if reference.shape != tokens.shape:
        raise ValueError(f"token shapes differ: {tuple(reference.shape)} and "
                         f"{tuple(tokens.shape)}")
    same = reference == tokens
    length = same.shape[1]
    first = [int((~row).nonzero()[0]) if not bool(row.all()) else length for row in same]
    return {"greedy_agreement": float(same.float().mean()),
            "greedy_first_divergence": sum(first) / len(first)}


class _TokenClock:
    """A streamer that notes when each step's new tokens reach the host (the first ``put``
    is the prompt, before any step), and calls ``on_first`` at the first."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.times: list[float] = []
        self._prompt_seen = False
        self._on_first = on_first

    def put(self, value: torch.Tensor) -> None:
        now = time.perf_counter()
        if self._prompt_seen:
            self.times.append(now)
            if len(self.times) == 1 and self._on_first is not None:
                self._on_first()
        self._prompt_seen = True

    def end(self) -> None:
        pass


def _quantize(model: Any, method: str, device: str) -> str:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    # torchao on use: only a quantized case pays for its import (and its warnings).
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        quantize_,
    )
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    if method == "int8_weight_only":
        config, text = Int8WeightOnlyConfig(), "torchao Int8WeightOnlyConfig (per channel)"
    elif method == "int8_dynamic":
        config, text = (Int8DynamicActivationInt8WeightConfig(),
                        "torchao Int8DynamicActivationInt8WeightConfig (per-token dynamic "
                        "int8 activations, per-channel int8 weights)")
    elif method == "int4_weight_only":
        config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32),
                                      mapping_type=MappingType.ASYMMETRIC)
        text = ("torchao IntxWeightOnlyConfig(int4, asymmetric, groups of 32): int4 values "
                "stored unpacked in int8 (no packed int4 kernel in this torchao wheel for "
                f"{device}), dequantized in the matmul")
    else:
        raise VariantNotApplied(f"unknown quantization {method!r}")
    # The output head stays in the model's precision, as transformers' TorchAoConfig
    # leaves the input and output embeddings by default (it holds the tied embedding).
    quantize_(model, config, filter_fn=lambda module, name: isinstance(module, torch.nn.Linear)
              and not name.endswith("lm_head"))
    quantized = sum(type(m.weight).__name__ != "Parameter" and
                    type(m.weight).__name__ != "Tensor"
                    for m in model.modules() if isinstance(m, torch.nn.Linear))
    if quantized == 0:
        raise VariantNotApplied(f"{method}: torchao quantized no Linear layer")
    return f"{text}: {quantized} Linear layers (the output head left as it was)"


def cache_tensor_bytes(cache: Any) -> int:
    """Bytes of the key and value tensors a transformers cache holds."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class HeldOutText:
    """The text perplexity is measured on, as token ids (1-D), in windows of ``window``."""

    ids: torch.Tensor
    source: str = "the shipped sentences"
    window: int = PERPLEXITY_WINDOW


@dataclass
class VariantBuild:
    steps: list[str]
    build_s: dict[str, float]


class GeneratePhase(Phase):
    """One case's model, prompts and settings; ``call`` times one generate call."""

    sample_unit = "tokens"

    def __init__(self, case: CaseSpec, ctx: RunContext, loaded: LoadedModel,
                 model_name: str, text: HeldOutText | None = None) -> None:
        a = case.axes
        self.device = ctx.device
        self.model_name = model_name
        self.batch, self.input_tokens = case.batch_size, int(a["input_tokens"])
        self.output_tokens = int(a["output_tokens"])
        self.kv_cache, self.attention = a["kv_cache"], a["attention"]
        self.backend, self.compile_mode = a["backend"], a.get("compile_mode", "default")
        self.quantization = a.get("quantization", "none")
        self.precision = ctx.precision
        self.tokenizer, self.loaded = loaded.tokenizer, loaded
        model = loaded.model.to(ctx.device)
        self.samples_per_step = self.batch  # tokens of one decode step
        self.text = text or HeldOutText(
            torch.tensor(self.tokenizer(held_out_text())["input_ids"]))
        text_ids = self.text.ids
        limit = int(case.params.get("perplexity_tokens", 0))
        self.text_ids = text_ids[:limit] if limit else text_ids
        prompts = int(case.params.get("agreement_prompts", AGREEMENT_PROMPTS))
        # On the device once: no host-to-device copy inside a timed call.
        self.prompts = token_windows(text_ids, self.batch, self.input_tokens,
                                     stride=max(1, text_ids.numel() // max(self.batch, 1))
                                     ).to(ctx.device)
        self.agreement_prompts = token_windows(text_ids, prompts, AGREEMENT_PROMPT_TOKENS,
                                               stride=text_ids.numel() // prompts)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        built = time.perf_counter()
        # A probe (bench max-batch) times the steps only: no quality figures to compare.
        self.reference_tokens = None if case.probe else \
            self._greedy(model, self.agreement_prompts, reference=True)
        self.build = VariantBuild([], {"reference_tokens_s": time.perf_counter() - built})
        self.model = self._apply_variant(model)
        self.weights_bytes = serialized_bytes(self.model)
        # The cache ends holding every token but the last new one, which is never fed back
        # (transformers sizes a static cache the same: max_length - 1).
        self.kv_cache_computed_bytes = kv_cache_bytes(
            self.model.config, self.batch, self.input_tokens + self.output_tokens - 1,
            self._cache_element_bytes())
        self.kv_cache_measured_bytes: int | None = None
        self.step_description = (
            f"one greedy generate call: batch {self.batch} x {self.input_tokens} prompt "
            f"tokens, exactly {self.output_tokens} new tokens; a step is one decode step "
            "(TPOT), the call's first token (TTFT) is timed apart")

    def _cache_element_bytes(self) -> int:
        dtype = self.precision.cast_dtype
        return 2 if dtype in ("bfloat16", "float16") else 4

    def _apply_variant(self, model: Any) -> Any:
        started = time.perf_counter()
        model, _ = self.precision.cast_model(model)
        if self.precision.cast_dtype:
            self.build.steps.append(self.precision.method())
        if self.quantization != "none":
            self.build.steps.append(_quantize(model, self.quantization, self.device))
        if self.attention != "sdpa":
            model.set_attn_implementation(self.attention)
            self.build.steps.append(f"attention: transformers {self.attention}")
        self.build.build_s["variant_s"] = time.perf_counter() - started
        if self.backend == "compile":
            self.build.steps.append(
                f"torch.compile of the decode step's forward (transformers CompileConfig: "
                f"fullgraph, dynamic=False, mode={self.compile_mode}), on the static cache; "
                "compiled on the first call (cold start)")
        return model

    def _generate_kwargs(self, reference: bool = False,
                         compiled: bool = True) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"do_sample": False, "pad_token_id": self.pad_id,
                                  "return_dict_in_generate": True}
        if reference or self.kv_cache == "dynamic":
            kwargs["disable_compile"] = True
            return kwargs
        kwargs["cache_implementation"] = "static"
        if self.backend == "compile" and compiled:
            from transformers import CompileConfig  # loaded by now: the model is one

            config = CompileConfig(fullgraph=True, dynamic=False, mode=self.compile_mode)
            config._compile_all_devices = True  # transformers compiles on CUDA only otherwise
            kwargs["compile_config"] = config
        else:
            kwargs["disable_compile"] = True  # on CUDA a static cache compiles by default
        return kwargs

    def _greedy(self, model: Any, prompts: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """The prompts' greedy tokens: the fp32 eager model's (``reference``), else the
        variant's with compilation off (its shapes would cost a compile of their own)."""
        with torch.inference_mode(), (contextlib.nullcontext() if reference
                                      else self.precision.context(self.device)):
            out = model.generate(prompts.to(self.device), max_new_tokens=AGREEMENT_NEW_TOKENS,
                                 min_new_tokens=AGREEMENT_NEW_TOKENS,
                                 **self._generate_kwargs(reference, compiled=False))
        return out.sequences[:, prompts.shape[1]:].cpu()

    def session(self) -> contextlib.AbstractContextManager[object]:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self.precision.context(self.device))
        return stack

    def call(self) -> GenerationCall:
        """One timed generate call on the case's prompts (inside ``session``)."""
        prompts = self.prompts
        clock = _TokenClock()
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.model.generate(prompts, max_new_tokens=self.output_tokens,
                                  min_new_tokens=self.output_tokens, streamer=clock,
                                  **self._generate_kwargs())
        if len(clock.times) != self.output_tokens:
            raise RuntimeError(f"generate made {len(clock.times)} tokens, not the "
                               f"{self.output_tokens} asked")
        self.kv_cache_measured_bytes = cache_tensor_bytes(out.past_key_values)
        return GenerationCall(start, tuple(clock.times), self.batch, self.input_tokens)

    def step(self) -> object:
        return self.call()

    serves_tokens = True

    def serve(self, samples: int, first_token: Callable[[], None] | None = None) -> int:
        """A LoadGen batch of ``samples`` requests: one generate call on the first
        ``samples`` of the case's prompts (``batch_size`` is the server's largest batch),
        ``first_token`` called when their first new tokens reach the host; returns the
        tokens made per request."""
        self.model.generate(self.prompts[:samples],
                            max_new_tokens=self.output_tokens,
                            min_new_tokens=self.output_tokens,
                            streamer=_TokenClock(first_token), **self._generate_kwargs())
        return self.output_tokens

    def finish(self) -> Outcome:
        with self.precision.context(self.device):
            ppl, predicted = perplexity(self.model, self.text_ids, self.text.window,
                                        device=self.device)
        tokens = self._greedy(self.model, self.agreement_prompts)
        metrics = {"perplexity": ppl, **greedy_agreement(self.reference_tokens, tokens)}
        details = {
            "model_source": self.loaded.source, "model_origin": self.loaded.origin,
            "model_name": self.model_name,
            "quality_method": (
                f"perplexity: exp(mean NLL) over {predicted} predicted tokens of "
                f"{self.text.source} in windows of {self.text.window}; greedy agreement: "
                f"{len(self.agreement_prompts)} prompts of {AGREEMENT_PROMPT_TOKENS} tokens, "
                f"{AGREEMENT_NEW_TOKENS} new tokens, against the fp32 eager model's tokens "
                "generated in this worker"
                + ("; both of the weights run eager (compilation off)"
                   if self.backend == "compile" else "")),
            "variant_steps": self.build.steps, "variant_build_s": self.build.build_s,
        }
        return Outcome(metrics=metrics, details=details, task_metric=("perplexity", False))
