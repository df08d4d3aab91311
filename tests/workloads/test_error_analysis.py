"""Error analysis in classification records, and a gate that fails a variant that
loses one class even while its overall accuracy passes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.cli import main
from bench.measurement.classes import class_report
from bench.reports.compare import compare_runs
from bench.reports.gate import Policy, evaluate
from bench.reports.parity import class_parity_failures, parity_by_case
from bench.results.schema import CaseResult
from tests.builders import case, run, trials, write

LABELS = [str(c) for c in range(10)]
REFERENCE = {"precision": "fp32", "quantization": "none"}


def _predictions(damaged_class: int | None = None, lost: int = 0) -> tuple[np.ndarray, ...]:
    """A classifier right on 355 of 360 validation images (36 per class); with a damaged
    class, ``lost`` more of that class's images are predicted as the next class."""
    truth = np.repeat(np.arange(10), 36)
    guess = truth.copy()
    guess[[3, 50, 100, 200, 300]] = (truth[[3, 50, 100, 200, 300]] + 1) % 10
    if damaged_class is not None:
        members = np.nonzero(truth == damaged_class)[0][10:10 + lost]
        guess[members] = (damaged_class + 1) % 10
    return truth, guess


def _classified(case_id: str, axes: dict, truth: np.ndarray, guess: np.ndarray) -> CaseResult:
    result = case(case_id, trials(0.01), accuracy=float((truth == guess).mean()))
    result.workload, result.axes = "digits_cnn", dict(axes)
    result.parity_reference = dict(REFERENCE)
    result.accuracy.metrics = {"val_accuracy": float((truth == guess).mean())}
    result.accuracy.task_metric = "val_accuracy"
    result.classes = class_report(truth, guess, LABELS)
    return result


def _pair(lost: int) -> list[CaseResult]:
    fp32 = _classified("digits_cnn/infer[quantization=none]", {**REFERENCE}, *_predictions())
    int8 = _classified("digits_cnn/infer[quantization=int8_dynamic]",
                       {**REFERENCE, "quantization": "int8_dynamic"},
                       *_predictions(damaged_class=3, lost=lost))
    return [fp32, int8]


def test_a_variant_that_loses_one_class_fails_while_overall_parity_passes():
    cases = _pair(lost=6)  # class 3 recall 1.0 -> 0.83; overall 355 -> 349 of 360
    parity = parity_by_case(cases)["digits_cnn/infer[quantization=int8_dynamic]"]
    assert parity.ratio > 0.98 and parity.worst_class.label == "3"
    assert parity.worst_class.drop == pytest.approx(6 / 36)
    failures = class_parity_failures(cases, max_drop=0.10)
    assert list(failures) == ["digits_cnn/infer[quantization=int8_dynamic]"]
    assert "class 3 recall" in failures["digits_cnn/infer[quantization=int8_dynamic]"]
    # Within the threshold: no failure.
    assert class_parity_failures(_pair(lost=2), max_drop=0.10) == {}


def test_bench_gate_fails_the_damaged_class_and_passes_the_intact_one(tmp_path, capsys):
    policy = Policy(accuracy_min_ratio=0.95)  # overall accuracy passes at 0.95
    intact = _pair(lost=0)
    damaged = _pair(lost=6)
    report = evaluate(compare_runs(run(*intact), run(*damaged)), policy)
    checks = {(f.case_id, f.check) for f in report.regressions}
    assert ("digits_cnn/infer[quantization=int8_dynamic]", "class parity") in checks
    assert ("digits_cnn/infer[quantization=int8_dynamic]", "classes") in checks
    assert not any(f.check == "accuracy" for f in report.regressions)
    assert evaluate(compare_runs(run(*intact), run(*_pair(lost=0))), policy).exit_code == 0

    base = write(tmp_path / "base.json", run(*intact))
    current = write(tmp_path / "current.json", run(*damaged))
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text("[accuracy]\nmin_ratio = 0.95\nmax_class_drop = 0.1\n")
    assert main(["gate", "--baseline", base, "--current", current, "--policy",
                 str(policy_file)]) == 1
    out = capsys.readouterr().out
    assert "class parity" in out and "class 3 recall 1.000 -> 0.833" in out
    policy_file.write_text("[accuracy]\nmin_ratio = 0.95\nmax_class_drop = 0.2\n")
    assert main(["gate", "--baseline", base, "--current", current, "--policy",
                 str(policy_file)]) == 0


def test_a_class_the_baseline_lost_too_is_a_warning_so_a_file_gated_against_itself_passes(
        tmp_path, capsys):
    """Issue 30: the loss is in the file, not in a change; only a new loss regresses."""
    policy = Policy(accuracy_min_ratio=0.95)
    damaged = _pair(lost=6)
    report = evaluate(compare_runs(run(*damaged), run(*_pair(lost=6))), policy)
    assert report.exit_code == 0 and not report.regressions
    (warning,) = report.warnings
    assert warning.check == "class parity" and "the baseline lost it too" in warning.text
    assert evaluate(compare_runs(run(*_pair(lost=0)), run(*damaged)), policy).exit_code == 1
    same = write(tmp_path / "same.json", run(*damaged))
    assert main(["gate", "--baseline", same, "--current", same]) == 0
    assert "PASS (with warnings)" in capsys.readouterr().out


def test_every_digits_record_carries_its_confusion_matrix():
    from bench.variants.precision import get_precision
    from bench.workloads import get_workload
    from bench.workloads.base import RunContext
    from tests.builders import workload_case

    case = workload_case("digits_cnn", "infer", params={"epochs": 1, "width": 8})
    phase = get_workload("digits_cnn").prepare(case, RunContext("cpu", get_precision("fp32")))
    outcome = phase.finish()
    report = outcome.classes
    assert report.labels == LABELS and sum(report.support) == 360
    assert sum(map(sum, report.confusion)) == 360
    correct = sum(report.confusion[i][i] for i in range(10))
    assert correct / 360 == pytest.approx(outcome.metrics["val_accuracy"])
    assert dataclasses.asdict(report)["method"].startswith("sklearn.metrics")
