"""Variant builders on tiny models: each really does what its name says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.variants import VariantNotApplied, distillation, pipeline, pruning, quantization
from bench.workloads.digits_cnn import DigitsCNN


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return DigitsCNN(width=4).eval()


def images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def adapter(model: nn.Module) -> pipeline.ModelAdapter:
    return pipeline.ModelAdapter(
        model=model, input_names=("images",), output_name="logits",
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        check_inputs=[(images(16, 1),), (images(5, 2),)],
        calibration=[(images(32, s),) for s in range(3, 7)],
        structured_pruner=pruning.conv_channels)


def weight_elements(model: nn.Module, kinds=(nn.Linear,)) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, kinds))


def test_torch_dynamic_int8_has_int8_linear_weights():
    model = tiny_cnn()
    variant = pipeline.build_variant(adapter(model), {"quantization": "int8_dynamic"}, "cpu")
    assert variant.model.int8_weights == weight_elements(model, (nn.Linear,))
    x = images(8, 9)
    expected = model(x)
    got = variant.infer((x,))
    assert nn.functional.cosine_similarity(expected, got).min() > 0.99


def test_torch_static_int8_quantizes_every_conv_and_linear():
    model = tiny_cnn()
    variant = pipeline.build_variant(adapter(model), {"quantization": "int8_static"}, "cpu")
    assert variant.model.int8_weights == weight_elements(model, (nn.Linear, nn.Conv2d))
    assert "4 calibration batches" in " ".join(variant.model.variant)
    assert variant.model.bytes < pipeline.serialized_bytes(model)


@pytest.mark.parametrize("method", ["int8_static", "int8_dynamic"])
def test_torchao_pt2e_graph_holds_int8_weights_and_no_fp32_copies(method):
    model = tiny_cnn()
    quantized, how = quantization.torchao_pt2e(
        model, quantization.QUANTIZATIONS[method].static, adapter(model).calibration, ("images",),
        {"images": {0: "batch"}})
    assert "X86InductorQuantizer" in how
    assert quantization.count_int8_weights(quantized) == \
        weight_elements(model, (nn.Linear, nn.Conv2d))
    float_weights = [n for n, t in quantized.state_dict().items()
                     if t.is_floating_point() and t.dim() > 1]
    assert float_weights == []
    x = images(9, 4)  # the batch axis was exported dynamic
    with torch.no_grad():
        expected, got = model(x), quantized(x)
    assert got.shape == (9, 10)
    assert nn.functional.cosine_similarity(expected, got).min() > 0.99


@pytest.mark.parametrize("backend", ["eager", "compile", "onnxruntime"])
@pytest.mark.parametrize("method", ["int8_dynamic", "int8_static"])
def test_a_quantization_that_quantizes_nothing_is_an_error_not_an_int8_figure(backend, method):
    """A model with no layer the quantizer handles (here: no weights at all) comes back
    unchanged: building it as int8 must fail, not time the fp32 model under an int8 name."""
    model = nn.Sequential(nn.ReLU(), nn.Flatten()).eval()
    with pytest.raises(VariantNotApplied, match=f"{method} left no int8 weights"):
        pipeline.build_variant(adapter(model), {"quantization": method, "backend": backend},
                               "cpu")


@pytest.mark.heavy
@pytest.mark.slow
def test_torch_int8_with_compile_runs_inductor_int8_kernels():
    model = tiny_cnn()
    variant = pipeline.build_variant(
        adapter(model), {"quantization": "int8_static", "backend": "compile"}, "cpu")
    assert any("torchao PT2E" in s for s in variant.model.variant)
    assert variant.model.bytes < pipeline.serialized_bytes(model)
    x = images(16, 5)
    out = variant.infer((x,))
    assert nn.functional.cosine_similarity(out, model(x).detach()).min() > 0.99


def test_onnx_export_runs_in_onnxruntime_and_matches_torch():
    model = tiny_cnn()
    variant = pipeline.build_variant(adapter(model), {"backend": "onnxruntime"}, "cpu")
    assert variant.model.export_check is None  # runs after timing
    check = variant.finalize().export_check
    assert check["passed"] and check["rows"] == 21 and check["max_abs_diff"] < 1e-4
    assert variant.model.bytes_method == "size of the .onnx file"
    x = images(7, 3)  # a batch size never exported: the batch axis is dynamic
    out = variant.infer((x,))
    assert out.shape == (7, 10)
    torch.testing.assert_close(out, model(x).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["int8_dynamic", "int8_static"])
def test_onnxruntime_int8_file_holds_int8_weights(method):
    model = tiny_cnn()
    variant = pipeline.build_variant(
        adapter(model), {"backend": "onnxruntime", "quantization": method}, "cpu")
    assert variant.model.int8_weights >= weight_elements(model, (nn.Linear,))
    assert variant.finalize().export_check["passed"]  # the fp32 export, checked apart
    logits = variant.infer((images(16, 1),))
    assert nn.functional.cosine_similarity(logits, model(images(16, 1)).detach()).mean() > 0.95


@pytest.mark.parametrize("name", ["magnitude-30", "magnitude-50", "magnitude-90"])
def test_magnitude_pruning_reaches_the_stated_sparsity(name):
    model = tiny_cnn()
    variant = pipeline.build_variant(adapter(model), {"pruning": name}, "cpu")
    target = pruning.PRUNINGS[name].amount
    assert variant.model.weight_sparsity == pytest.approx(target, abs=0.01)
    assert variant.model.parameters == variant.model.reference_parameters


def test_pruning_is_made_permanent():
    model = tiny_cnn()
    pruning.magnitude(model, 0.5)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())
    assert pruning.sparsity_report(model).sparsity == pytest.approx(0.5, abs=0.01)


def test_magnitude_pruning_removes_the_smallest_weights():
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -5.0, 0.5, 3.0], [-0.1, 2.0, 4.0, -6.0]]))
    pruning.magnitude(layer, 0.5)
    assert layer.weight.tolist() == [[0.0, -5.0, 0.0, 3.0], [0.0, 0.0, 4.0, -6.0]]


def test_structured_channel_pruning_zeroes_whole_channels():
    model = tiny_cnn()
    pruning.conv_channels(model, 0.5)
    for conv in (model.features[0], model.features[2]):
        dead = conv.weight.flatten(1).abs().sum(1) == 0
        assert int(dead.sum()) == conv.out_channels // 2
        assert bool((conv.bias[dead] == 0).all())


def test_two_four_mask_keeps_two_largest_of_every_four():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.2, 5.0, 4.0, -0.3, 0.0]])
    mask = pruning._two_four_mask(w)
    assert mask.tolist() == [[False, True, True, False, True, True, False, False]]


def test_unsupported_combinations_have_reasons():
    support = pipeline.VariantSupport(structured_pruning=None)
    reason = pipeline.unsupported_reason
    assert "precision=fp32" in reason({"quantization": "int8_dynamic", "precision": "bf16"},
                                      "cpu", support)
    assert "fp32 export" in reason({"backend": "onnxruntime", "precision": "fp16"}, "cpu",
                                   support)
    assert "no structured pruning" in reason({"pruning": "structured-25"}, "cpu", support)
    assert "CUDA only" in reason({"pruning": "semi-2:4", "precision": "fp16_cast"}, "cpu",
                                 support)
    assert "eager-mode static" in reason({"quantization": "int8_static"}, "cpu", support)
    assert reason({"quantization": "int8_static", "backend": "compile"}, "cpu",
                  support) is None
    assert "x86 CPU kernels only" in reason({"quantization": "int8_dynamic",
                                             "backend": "compile"}, "cuda", support)
    assert reason({"backend": "onnxruntime", "quantization": "int8_static"}, "cpu",
                  support) is None


def test_weight_cast_precision_casts_weights_and_inputs():
    model = tiny_cnn()
    variant = pipeline.build_variant(adapter(model), {"precision": "bf16_cast"}, "cpu")
    x = images(4)
    prepared = variant.prepare((x,))
    assert prepared[0].dtype == torch.bfloat16
    assert variant.model.bytes < 0.6 * pipeline.serialized_bytes(model)
    assert nn.functional.cosine_similarity(variant.infer((x,)), model(x).detach()).min() > 0.99


def test_distillation_loss_reduces_to_its_parts():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    labels = torch.randint(0, 10, (6,))
    targets = distillation.soft_targets(labels, teacher)
    hard = distillation.distillation_loss(student, targets, alpha=0.0)
    torch.testing.assert_close(hard, nn.functional.cross_entropy(student, labels))
    same = distillation.distillation_loss(teacher, distillation.soft_targets(labels, teacher),
                                          alpha=1.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)  # KL of a distribution to itself


def test_registry_names_are_the_axis_choices():
    assert quantization.quantization_axis().choices == ("none", *quantization.QUANTIZATIONS)
    assert pruning.pruning_axis().choices == ("none", *pruning.PRUNINGS)
    assert {p.name for p in pruning.PRUNINGS.values()} == set(pruning.PRUNINGS)
    assert set(pipeline.variant_axes()) == {"backend", "quantization", "pruning"}


@pytest.mark.slow
def test_variant_case_through_the_worker_records_model_and_parity(tmp_path):
    """An ONNX Runtime static-int8 digits case and its fp32 eager reference, end to end
    through the isolated worker and the result file."""
    from bench.launch.isolation import run_isolated
    from bench.reports.parity import parity_by_case
    from bench.spec.model import Budget, CaseSpec
    from bench.workloads import get_workload

    budget = Budget(min_trials=3, max_trials=5, max_time_s=0.5, trial_time_s=0.01,
                    warmup_max_s=0.1, timeout_s=120)
    params = {"epochs": 2, "lr": 2e-3, "width": 8, "student_width": 4}
    base = {"device": "cpu", "precision": "fp32", "batch_size": 16}
    reference = get_workload("digits_cnn").parity_reference("infer")
    cases = [CaseSpec("digits_cnn", "infer", {**base, **axes}, params, budget,
                      parity_reference=reference)
             for axes in ({}, {"backend": "onnxruntime", "quantization": "int8_static"})]
    results = [run_isolated(c) for c in cases]
    assert [r.measured for r in results] == [True, True], [r.reason for r in results]
    model = results[1].model
    assert model.int8_weights > 0 and model.export_check["passed"]
    assert any("quantize_static" in step for step in model.variant)
    parity = parity_by_case(results)[results[1].case_id]
    assert parity.reference_case == results[0].case_id


@pytest.mark.parametrize("method", ["int8_static", "int8_dynamic"])
def test_torchao_pt2e_exports_a_forward_of_varargs(method):
    """The user-model path wraps every model in a forward(*inputs) module (SingleOutput):
    torch.export takes its dynamic shapes as one tuple (a mismatch error before the fix)."""
    from bench.workloads.user_model import SingleOutput, pick_output

    model = SingleOutput(tiny_cnn(), pick_output).eval()
    quantized, _ = quantization.torchao_pt2e(
        model, quantization.QUANTIZATIONS[method].static, adapter(model).calibration,
        ("images",), {"images": {0: "batch"}})
    x = images(9, 4)
    with torch.no_grad():
        assert nn.functional.cosine_similarity(model(x), quantized(x)).min() > 0.99


def test_a_models_size_is_what_torch_save_writes_counted_without_keeping_a_copy():
    """The weights' bytes are measured inside the case whose peak memory is recorded: a
    buffer of the saved file (before: io.BytesIO) added the model's size, or twice it as
    the buffer grew, to that peak (SmolLM2 fp32: 513 MiB of weights, peak 1.3 GiB)."""
    import io
    import tracemalloc

    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 2000))  # 12 MB of fp32
    written = io.BytesIO()
    torch.save(model.state_dict(), written)
    tracemalloc.start()
    try:
        size = pipeline.serialized_bytes(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == written.tell()
    assert peak < size / 20  # nothing near the file's size is held
