"""Accuracy parity against the fp32 reference of the same workload and shape."""

from __future__ import annotations

import pytest

from bench.reports.parity import parity_by_case
from bench.reports.table import render_report
from bench.results.schema import AccuracyResult, CaseResult, RunInfo, RunRecord
from bench.spec import load_suite
from bench.spec.expand import expand_suite
from bench.workloads import get_workload, workload_names

# What the loader records for these workloads' variant axes (their declared defaults).
DEFAULTS = {"precision": "fp32", "backend": "eager", "quantization": "none"}


def case(workload, axes, metric, value, higher=True, status="ok", target=0.99, label=""):
    names = ",".join(f"{k}={v}" for k, v in axes.items())
    return CaseResult(
        case_id=f"{workload}/infer{label}[{names}]", workload=workload, phase="infer",
        axes=axes, params={}, status=status, label=label.lstrip(":") or None,
        parity_reference={k: v for k, v in DEFAULTS.items() if k in axes},
        accuracy=AccuracyResult(metrics={metric: value}, targets=[], passed=None,
                                task_metric=metric, higher_is_better=higher,
                                parity_target=target))


def test_ratio_and_verdict_for_higher_is_better():
    cases = [
        case("d", {"device": "cpu", "precision": "fp32", "batch_size": 8}, "acc", 0.990),
        case("d", {"device": "cpu", "precision": "bf16", "batch_size": 8}, "acc", 0.985),
        case("d", {"device": "cpu", "precision": "fp16", "batch_size": 8}, "acc", 0.970),
    ]
    parity = parity_by_case(cases)
    fp32, bf16, fp16 = (parity[c.case_id] for c in cases)
    assert fp32.ratio == 1.0 and fp32.passed
    assert bf16.ratio == pytest.approx(0.985 / 0.990) and bf16.passed  # 99.49%
    assert fp16.ratio == pytest.approx(0.970 / 0.990) and not fp16.passed  # 97.98%
    assert bf16.reference_case == cases[0].case_id


def test_lower_is_better_inverts_the_ratio():
    cases = [
        case("l", {"device": "cpu", "precision": "fp32"}, "mse", 0.010, higher=False),
        case("l", {"device": "cpu", "precision": "bf16"}, "mse", 0.0125, higher=False),
    ]
    assert parity_by_case(cases)[cases[1].case_id].ratio == pytest.approx(0.8)


def test_reference_must_match_shape_device_label_and_be_ok():
    cases = [
        case("d", {"device": "cpu", "precision": "fp32", "batch_size": 8}, "acc", 0.99),
        case("d", {"device": "cpu", "precision": "bf16", "batch_size": 16}, "acc", 0.99),
        case("d", {"device": "cuda", "precision": "bf16", "batch_size": 8}, "acc", 0.99),
        case("d", {"device": "cpu", "precision": "bf16", "batch_size": 8}, "acc", 0.99,
             label=":other"),
        case("d", {"device": "cpu", "precision": "fp32", "batch_size": 32}, "acc", 0.99,
             status="crashed"),
        case("d", {"device": "cpu", "precision": "bf16", "batch_size": 32}, "acc", 0.99),
    ]
    assert set(parity_by_case(cases)) == {cases[0].case_id}


def test_custom_target_and_report_columns():
    cases = [
        case("d", {"device": "cpu", "precision": "fp32"}, "acc", 0.90, target=0.95),
        case("d", {"device": "cpu", "precision": "bf16"}, "acc", 0.86, target=0.95),
    ]
    assert parity_by_case(cases)[cases[1].case_id].passed is True  # 95.6% >= 95%
    info = RunInfo(run_id="r", suite_name="s", suite_path="p", suite_sha256="0",
                   started_at="t", command=[])
    text = render_report(RunRecord(run=info, fingerprint={}, cases=cases), "csv")
    assert text.splitlines()[0].endswith("vs fp32,parity")
    assert "0.9556,pass" in text


def test_a_compiled_gpt_case_is_compared_with_its_eager_case():
    eager = case("gpt", {"device": "cpu", "precision": "fp32", "backend": "eager"}, "bpb", 2.0,
                 higher=False)
    compiled = case("gpt", {"device": "cpu", "precision": "fp32", "backend": "compile"}, "bpb",
                    2.1, higher=False)
    parity = parity_by_case([eager, compiled])
    assert parity[compiled.case_id].reference_case == eager.case_id
    assert parity[compiled.case_id].ratio == pytest.approx(2.0 / 2.1)


@pytest.mark.parametrize("workload, phase", [(name, phase) for name in workload_names()
                                             for phase in get_workload(name).phases])
def test_parity_references_are_the_declared_defaults_of_the_variant_axes(workload, phase,
                                                                          write_suite):
    """No second list: every workload's cases carry the defaults of its variant axes."""
    suite = load_suite(write_suite(f'[[benchmark]]\nworkload = "{workload}"\n'
                                   f'phase = "{phase}"\n'))
    declared = {k: s.default for k, s in get_workload(workload).axes().items()
                if s.variant and (s.phases is None or phase in s.phases)}
    assert get_workload(workload).parity_reference(phase) == declared
    for spec in expand_suite(suite):
        assert spec.parity_reference == declared
        assert CaseResult.for_case(spec, "ok").parity_reference == declared


def test_compile_is_one_backend_axis_for_every_workload():
    backends = {name: get_workload(name).axes().get("backend") for name in workload_names()}
    assert backends["gpt"].choices == ("eager", "compile")  # the backends that train
    for name, axis in backends.items():
        assert "compile" not in get_workload(name).axes(), name
        if axis is not None:
            assert axis.default == "eager" and axis.variant and "compile" in axis.choices
