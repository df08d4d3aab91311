"""Text-generation figures from token timestamps (issue 29's definitions, written here once).

The field does not agree on names, so each figure says what it is:

- TTFT (time to first token): from the generate call to its first new token. It holds the
  prefill (the whole prompt in one forward pass) and the first decode step's sampling.
- Prefill tokens/s: batch x input tokens / TTFT.
- TPOT (time per output token, per request): (end-to-end - TTFT) / (output tokens - 1);
  undefined for a one-token output (there is no decode step to time), and said so.
- Decode tokens/s: batch x (output tokens - 1) / (end-to-end - TTFT).
- ITL (inter-token latency): every gap between consecutive new tokens, as a distribution
  (p50/p90/p99 over all gaps of all calls); vLLM's ITL, where TPOT is its mean per request.
- The first three token times (from the call) are kept apart, so a compile's or a cache's
  warm-up in the first steps stays visible instead of hiding in a mean.

A batched greedy call produces every sequence's k-th token together, so one call is one
timeline: the call's start and the time each step's tokens were ready.

The KV cache: ``kv_cache_bytes`` is its size from the model's config, two tensors (key and
value) per layer of batch x KV heads x tokens x head dim elements, for grouped-query
attention the KV heads (``num_key_value_heads``), not the query heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.measurement.stats import percentiles

TTFT_DEFINITION = "from the generate call to its first new token (prefill and first step)"
TPOT_DEFINITION = "(end-to-end - TTFT) / (output tokens - 1), per call"
ITL_DEFINITION = "every gap between consecutive new tokens, over all calls"
FIRST_TOKENS = 3


@dataclass(frozen=True)
class GenerationCall:
    """One generate call's timeline: when it started, and when each new token (every
    sequence of the batch's, produced together) was ready, in seconds of one clock."""

    start_s: float
    token_times_s: tuple[float, ...]
    batch: int
    input_tokens: int  # per sequence

    def __post_init__(self) -> None:
        if not self.token_times_s:
            raise ValueError("a generate call produced no token")
        times = (self.start_s, *self.token_times_s)
        if any(b < a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError("token times must not run backwards from the call's start")
        if self.batch < 1 or self.input_tokens < 1:
            raise ValueError(f"batch {self.batch} and input tokens {self.input_tokens} must "
                             "be at least 1")

    @property
    def output_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> float:
        return self.token_times_s[0] - self.start_s

    @property
    def end_to_end_s(self) -> float:
        return self.token_times_s[-1] - self.start_s

    @property
    def decode_s(self) -> float:
        return self.end_to_end_s - self.ttft_s

    @property
    def tpot_s(self) -> float | None:
        """None for a one-token output: no decode step to time."""
        if self.output_tokens < 2:
            return None
        return self.decode_s / (self.output_tokens - 1)

    @property
    def inter_token_s(self) -> list[float]:
        times = self.token_times_s
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch * self.input_tokens / self.ttft_s if self.ttft_s > 0 else \
            float("inf")

    @property
    def decode_tokens_per_s(self) -> float | None:
        if self.output_tokens < 2 or self.decode_s <= 0:
            return None
        return self.batch * (self.output_tokens - 1) / self.decode_s

    @property
    def first_token_times_s(self) -> list[float]:
        return [t - self.start_s for t in self.token_times_s[:FIRST_TOKENS]]


@dataclass(frozen=True)
class GenerationFigures:
    """The figures of several calls of one case (its trials): percentiles of TTFT, the
    median TPOT, ITL percentiles over every gap, throughput medians, and why a figure is
    missing where it is."""

    calls: int
    output_tokens: int
    ttft_s: dict[str, float]
    tpot_s: dict[str, float] | None
    itl_s: dict[str, float] | None
    end_to_end_s: dict[str, float]
    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None
    first_token_times_s: list[list[float]]
    missing: dict[str, str]
    definitions: dict[str, str]


def _median(values: list[float]) -> float:
    return percentiles(values, (50,))["p50"]


def generation_figures(calls: list[GenerationCall]) -> GenerationFigures:
    """The case's figures over its calls (all of one shape: batch, input and output)."""
    if not calls:
        raise ValueError("no generate call to summarize")
    shapes = {(c.batch, c.input_tokens, c.output_tokens) for c in calls}
    if len(shapes) > 1:
        raise ValueError(f"calls of different shapes (batch, input, output): {sorted(shapes)}")
    output = calls[0].output_tokens
    missing = {}
    tpots = [c.tpot_s for c in calls if c.tpot_s is not None]
    gaps = [gap for c in calls for gap in c.inter_token_s]
    decode = [v for c in calls if (v := c.decode_tokens_per_s) is not None]
    if output < 2:
        missing["tpot"] = missing["itl"] = missing["decode_tokens_per_s"] = (
            "one output token: no decode step, so no time per output token")
    return GenerationFigures(
        calls=len(calls), output_tokens=output,
        ttft_s=percentiles([c.ttft_s for c in calls]),
        tpot_s=percentiles(tpots) if tpots else None,
        itl_s=percentiles(gaps) if gaps else None,
        end_to_end_s=percentiles([c.end_to_end_s for c in calls]),
        prefill_tokens_per_s=_median([c.prefill_tokens_per_s for c in calls]),
        decode_tokens_per_s=_median(decode) if decode else None,
        first_token_times_s=[c.first_token_times_s for c in calls],
        missing=missing,
        definitions={"ttft": TTFT_DEFINITION, "tpot": TPOT_DEFINITION, "itl": ITL_DEFINITION},
    )


def kv_cache_bytes(config: Any, batch: int, tokens: int, bytes_per_element: int) -> int:
    """The KV cache of a decoder (a transformers config: layers, attention heads, KV heads,
    hidden size or head dim) holding ``tokens`` positions of ``batch`` sequences."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * layers * batch * kv_heads * tokens * head_dim * bytes_per_element
