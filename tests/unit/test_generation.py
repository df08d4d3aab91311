"""Text-generation figures (bench.measurement.generation): TTFT, TPOT, ITL and token
throughput on scripted token timestamps, a one-token output said, and the KV-cache size
formula against the cache a real decoder allocates."""

from __future__ import annotations

import pytest

from bench.measurement.generation import GenerationCall, generation_figures, kv_cache_bytes

# Batch 2, 128 input tokens each; 4 new tokens ready at 0.30, 0.35, 0.41 and 0.46 s.
CALL = GenerationCall(start_s=10.0, token_times_s=(10.30, 10.35, 10.41, 10.46), batch=2,
                      input_tokens=128)


def test_ttft_tpot_itl_and_token_throughput_follow_their_definitions():
    assert CALL.ttft_s == pytest.approx(0.30)
    assert CALL.end_to_end_s == pytest.approx(0.46)
    assert CALL.tpot_s == pytest.approx(0.16 / 3)  # (end-to-end - TTFT) / (outputs - 1)
    assert CALL.inter_token_s == pytest.approx([0.05, 0.06, 0.05])
    assert CALL.prefill_tokens_per_s == pytest.approx(2 * 128 / 0.30)
    assert CALL.decode_tokens_per_s == pytest.approx(2 * 3 / 0.16)
    assert CALL.first_token_times_s == pytest.approx([0.30, 0.35, 0.41])


def test_a_cases_figures_pool_its_calls_with_itl_over_every_gap():
    later = GenerationCall(0.0, (0.20, 0.30, 0.40, 0.50), batch=2, input_tokens=128)
    figures = generation_figures([CALL, later])
    assert figures.calls == 2 and figures.output_tokens == 4
    assert figures.ttft_s["p50"] == pytest.approx(0.25)
    assert figures.tpot_s["p50"] == pytest.approx((0.16 / 3 + 0.1) / 2)
    # ITL: the six gaps of both calls, 0.05 0.05 0.06 0.1 0.1 0.1
    assert figures.itl_s["p50"] == pytest.approx(0.08)
    assert figures.itl_s["p99"] == pytest.approx(0.1)
    assert figures.missing == {} and "first new token" in figures.definitions["ttft"]


def test_a_one_token_output_has_no_tpot_and_says_why():
    one = GenerationCall(0.0, (0.25,), batch=1, input_tokens=16)
    assert one.tpot_s is None and one.decode_tokens_per_s is None and one.inter_token_s == []
    figures = generation_figures([one, one])
    assert figures.tpot_s is None and figures.itl_s is None
    assert figures.decode_tokens_per_s is None
    assert "one output token" in figures.missing["tpot"]
    assert figures.ttft_s["p50"] == pytest.approx(0.25)


def test_timelines_that_cannot_be_are_refused():
    with pytest.raises(ValueError, match="backwards"):
        GenerationCall(1.0, (0.9, 1.2), batch=1, input_tokens=8)
    with pytest.raises(ValueError, match="no token"):
        GenerationCall(1.0, (), batch=1, input_tokens=8)
    with pytest.raises(ValueError, match="different shapes"):
        generation_figures([CALL, GenerationCall(0.0, (0.1, 0.2), batch=2, input_tokens=128)])


def test_the_kv_cache_formula_matches_what_a_decoder_allocates():
    """Grouped-query attention (2 KV heads for 4 query heads): the formula counts the KV
    heads, and equals the bytes of every key and value tensor transformers' cache holds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        cache = model(torch.randint(0, 100, (3, 7)), use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (layer.keys, layer.values))
    assert held == kv_cache_bytes(config, batch=3, tokens=7, bytes_per_element=4)
    # Counting the query heads instead would read twice as much.
    assert held == 2 * 3 * 3 * 2 * 7 * 16 * 4
