"""Accuracy parity against the fp32 reference of the same workload and shape."""

from __future__ import annotations

import pytest

from bench.reports.parity import parity_by_case
from bench.reports.table import render_report
from bench.results.schema import AccuracyResult, CaseResult, RunInfo, RunRecord


def case(workload, axes, metric, value, higher=True, status="ok", target=0.99, label=""):
    names = ",".join(f"{k}={v}" for k, v in axes.items())
    return CaseResult(
        case_id=f"{workload}/infer{label}[{names}]", workload=workload, phase="infer",
        axes=axes, params={}, status=status, label=label.lstrip(":") or None,
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
    eager = case("gpt", {"device": "cpu", "precision": "fp32", "compile": False}, "bpb", 2.0,
                 higher=False)
    compiled = case("gpt", {"device": "cpu", "precision": "fp32", "compile": True}, "bpb",
                    2.1, higher=False)
    parity = parity_by_case([eager, compiled])
    assert parity[compiled.case_id].reference_case == eager.case_id
    assert parity[compiled.case_id].ratio == pytest.approx(2.0 / 2.1)
