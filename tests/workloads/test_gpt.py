"""The GPT workload: FLOPs against the analytic formula, real learning, checkpointing
equivalence, the memory split, the corpus split, and the MFU record."""

from __future__ import annotations

import pytest
import torch

from bench.measurement import flops
from bench.spec.model import Budget, CaseSpec
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import RunContext
from bench.workloads.gpt import (
    GPTInfer,
    GPTTrain,
    load_corpus,
    saved_activation_bytes,
    windows,
)
from bench.workloads.gpt_model import CONFIGS, GPT, GPTConfig, next_token_loss
from tests.builders import workload_case

# FlopCounterMode counts matmuls and attention only; the formula's N also holds biases and
# LayerNorm gains, which cost no matmul: ~1.5% of N for the tiny config, 0.1% for gpt2-124m.
FLOP_TOLERANCE = 0.03
CPU = RunContext("cpu", get_precision("fp32"))


def gpt_case(phase: str = "train", **axes) -> CaseSpec:
    return workload_case("gpt", phase, axes, {"train_steps": 60, "corpus_mib": 0.5})


def batch(cfg: GPTConfig, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    train, _, _ = load_corpus(0.5)
    return windows(train, n, cfg.block_size, seed)


@pytest.mark.parametrize("phase_cls, phase", [(GPTTrain, "train"), (GPTInfer, "infer")])
def test_counted_flops_match_the_analytic_formula(phase_cls, phase):
    count = phase_cls(gpt_case(phase, batch_size=4), CPU).flop_count()
    assert count.counted_per_step == pytest.approx(count.analytic_per_step, rel=FLOP_TOLERANCE)
    assert ("6N + 12" if phase == "train" else "2N + 4") in count.analytic_formula


def test_analytic_formula_is_gpt2s_for_gpt2_124m():
    model = GPT(CONFIGS["gpt2-124m"])
    # 124M parameters with the padded vocabulary, position embeddings excluded from N.
    assert model.non_embedding_parameters() == pytest.approx(123.6e6, rel=0.01)
    from bench.workloads.gpt_model import analytic_flops_per_token

    per_token, _ = analytic_flops_per_token(model, 1024, train=True)
    assert per_token == 6 * model.non_embedding_parameters() + 12 * 12 * 768 * 1024


def test_accumulation_multiplies_the_flops_of_a_step():
    one = GPTTrain(gpt_case(batch_size=4), CPU).flop_count()
    four = GPTTrain(gpt_case(batch_size=4, accum_steps=4), CPU).flop_count()
    assert four.counted_per_step == pytest.approx(4 * one.counted_per_step, rel=1e-9)


def test_loss_decreases_and_validation_beats_uniform_bytes():
    phase = GPTTrain(gpt_case(batch_size=16), CPU)
    outcome = phase.finish()
    curve = outcome.details["train_loss_curve"]
    assert curve[-1] < curve[0] - 0.5  # nats per byte
    assert outcome.metrics["val_bpb"] < 6.0  # uniform over 256 byte values: 8 bits
    split = outcome.details["memory_split"]
    assert split["optimizer_state_mib"] == pytest.approx(2 * split["parameters_mib"], rel=0.01)


def test_checkpointing_gives_the_same_loss_and_gradients():
    cfg = CONFIGS["tiny"]
    x, y = batch(cfg)
    grads, losses = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GPT(cfg, checkpointing=checkpointing).train()
        loss = next_token_loss(model(x), y)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def test_checkpointing_keeps_fewer_activations_for_backward():
    cfg = CONFIGS["small"]
    x, y = batch(cfg)
    saved = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        saved.append(saved_activation_bytes(GPT(cfg, checkpointing), x, y, CPU))
    assert saved[1] < saved[0] / 2


def test_corpus_split_is_fixed_and_disjoint():
    train, val, info = load_corpus(0.5)
    again = load_corpus.__wrapped__(0.5)
    assert info["sha256"] == again[2]["sha256"]
    assert info["train_bytes"] + info["val_bytes"] >= 0.5 * (1 << 20)
    assert 0.08 < info["val_bytes"] / (info["train_bytes"] + info["val_bytes"]) < 0.3
    assert bytes(val[:200]) not in bytes(train)


def test_mfu_divides_achieved_by_both_peaks(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(flops, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(flops, "_time_matmul", lambda device, dtype: (700.0, "test matmul"))
    count = flops.FlopCount(counted_per_step=5e12, analytic_per_step=5.1e12,
                            analytic_formula="f", compute_dtype="bf16")
    record = flops.compute_record(count, median_step_s=0.01, device="cuda")
    assert record.achieved_tflops == pytest.approx(500.0)
    assert record.mfu_spec == pytest.approx(500.0 / 989.4)
    assert record.mfu_measured == pytest.approx(500.0 / 700.0)
    assert record.counted_over_analytic == pytest.approx(5 / 5.1)
    # The peak is measured once per machine and dtype, then read from the cache.
    monkeypatch.setattr(flops, "_time_matmul", lambda device, dtype: pytest.fail("re-measured"))
    again = flops.compute_record(count, median_step_s=0.01, device="cuda")
    assert again.peak_measured_method.endswith("(cached)")


def test_cpu_theoretical_peak_is_threads_clock_and_fma_width():
    peak, source = flops.cpu_theoretical_peak("fp32", 2, {"avx2", "fma"}, 2245.8)
    assert peak == pytest.approx(2 * 2245.8e6 * 32 / 1e12)  # 0.1437 TFLOP/s
    assert "AVX2+FMA" in source
    assert flops.cpu_theoretical_peak("fp32", 4, {"avx512f"}, 1000.0)[0] == pytest.approx(0.256)
    assert flops.cpu_theoretical_peak("bf16", 2, {"avx512f", "amx_bf16"}, 1000.0) is None
    assert flops.cpu_theoretical_peak("fp32", 2, {"sse4_2"}, 1000.0) is None


def test_unknown_device_has_no_spec_peak_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(flops, "cpu_theoretical_peak", lambda *args: None)
    monkeypatch.setattr(flops, "_time_matmul", lambda device, dtype: (0.1, "test matmul"))
    count = flops.FlopCount(1e9, 1e9, "f", "fp32")
    record = flops.compute_record(count, median_step_s=0.1, device="cpu")
    assert record.mfu_spec is None and "no dense spec peak" in record.peak_spec_source
    assert record.mfu_measured == pytest.approx(0.01 / 0.1)


def test_measured_peak_times_a_real_matmul(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    tflops, method = flops.measured_peak("cpu", "fp32")
    assert 0 < tflops < 100 and "n = 256/512/1024" in method
    assert (tmp_path / "peak_tflops.json").exists()


def test_fp8_is_skipped_with_a_reason_where_it_cannot_run():
    from bench.orchestrate.plan import skip_reason

    def reason(workload, phase, device):
        axes = {"device": device, "precision": "fp8", "batch_size": 8}
        return skip_reason(CaseSpec(workload, phase, axes, {}, Budget()))

    assert "does not build float8 training" in reason("digits_cnn", "train", "cpu")
    assert "not available on cpu" in reason("gpt", "train", "cpu")
    assert "fp8 inference is not built" in reason("gpt", "infer", "cpu")


def test_fp8_swaps_eligible_linears_but_not_the_tied_head():
    model = GPT(CONFIGS["tiny"])
    done = get_precision("fp8").prepare_model(model)
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    assert kinds["blocks.0.attn.c_attn"] == "Float8Linear"
    assert kinds["blocks.1.mlp.c_proj"] == "Float8Linear"
    assert kinds["lm_head"] == "Linear" and model.lm_head.weight is model.wte.weight
    assert "8 Linear -> Float8Linear" in done


def test_fp8_that_swaps_no_linear_is_an_error_not_a_bf16_figure_named_fp8():
    from torch import nn

    from bench.variants import VariantNotApplied

    odd = nn.Sequential(nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 8))  # 20: not 16k
    with pytest.raises(VariantNotApplied, match="swapped no Linear"):
        get_precision("fp8").prepare_model(odd)


def test_the_step_recipe_says_what_the_timed_step_used():
    phase = GPTTrain(gpt_case("train", batch_size=4, fused_optimizer=True), CPU)
    recipe = phase.step_recipe(phase.trainer.optimizer, phase.step)
    assert recipe["backend"] == "eager"
    assert recipe["optimizer"] == "AdamW (fused)"
    # SDPA's own kernel (CPU: flash), forward and backward, not the math fallback.
    assert recipe["attention"] == ["aten._scaled_dot_product_flash_attention_for_cpu",
                                   "aten._scaled_dot_product_flash_attention_for_cpu_backward"]
    assert recipe["host_syncs"] == "not checked: no CUDA device"


def test_compile_mode_is_passed_to_torch_compile_and_needs_the_compile_backend(monkeypatch):
    from bench.variants.backends import BACKENDS

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    model = GPT(CONFIGS["tiny"])
    BACKENDS["compile"].training_module(model, "max-autotune-no-cudagraphs")
    BACKENDS["compile"].training_module(model)
    assert calls == [{"mode": "max-autotune-no-cudagraphs"}, {}]
    reason = get_workload("gpt").unsupported_reason(
        gpt_case("train", backend="eager", compile_mode="max-autotune"))
    assert reason == "compile_mode=max-autotune is torch.compile's: it needs backend=compile"


def test_the_gpt_model_as_transformers_gpt2_gives_the_same_logits_and_tokens():
    """The generate phase runs gpt through transformers' GPT-2: the same weights must give
    the same logits (nanoGPT is GPT-2's architecture), and a greedy generate the tokens
    of a plain argmax loop over the nanoGPT model."""
    from bench.workloads._gpt_hf import max_logit_difference, to_transformers

    torch.manual_seed(0)
    model = GPT(CONFIGS["small"]).eval()
    hf = to_transformers(model)
    ids = torch.randint(1, 256, (2, 100))
    assert max_logit_difference(model, hf, ids) < 1e-4
    prompt = ids[:, :40]
    out = hf.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                      pad_token_id=0)
    with torch.inference_mode():
        loop = prompt
        for _ in range(8):
            loop = torch.cat([loop, model(loop)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, loop)
    hf.transformer.h[0].mlp.c_fc.weight.data.zero_()  # a copy: nanoGPT's stays as it was
    assert model.blocks[0].mlp.c_fc.weight.abs().sum() > 0


def test_a_gpt_generate_case_must_fit_the_context(write_suite):
    from bench.orchestrate.plan import skip_reason
    from bench.spec import load_suite
    from bench.spec.expand import expand_suite

    path = write_suite('[[benchmark]]\nworkload = "gpt"\nphase = "generate"\n'
                       'matrix = { model = ["tiny"], input_tokens = [48, 60], '
                       'output_tokens = [16] }\n')
    fits, too_long = expand_suite(load_suite(path))
    assert skip_reason(fits) is None
    assert "input_tokens + output_tokens = 76 exceeds the tiny config's context of 64" \
        in skip_reason(too_long)
