"""Time-to-accuracy mode: runs to a target over seeds, the olympic score, early
stopping, not_converged, recipe axes, imbalance and sampling, per-class figures."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.errors import BenchInputError
from bench.launch.merge import merge_seed_runs
from bench.measurement.classes import class_report, pooled, summary_metrics
from bench.measurement.stats import olympic
from bench.measurement.timers import PerfCounterTimer
from bench.measurement.training_run import run_to_target
from bench.results.schema import (
    STATUS_NOT_CONVERGED,
    CaseResult,
    ThroughputResult,
    TimeToAccuracyResult,
)
from bench.results.store import load_run
from bench.spec import load_suite
from bench.spec.model import CaseSpec, TrainingRunSpec
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads._recipes import SCHEDULES, Schedule, epoch_order
from bench.workloads.base import EvaluatedTraining, RunContext
from bench.workloads.digits_cnn import MINORITY_CLASSES, imbalanced, tensors
from tests.builders import benchmark_text, budget_text, suite_text, workload_case
from tests.builders import case as gate_case
from tests.builders import run as gate_run

FP32 = get_precision("fp32")


def _case(workload: str, axes: dict, params: dict | None = None,
          training: TrainingRunSpec | None = None, seed: int = 1) -> CaseSpec:
    return workload_case(workload, "train", axes, params, training=training, seed=seed)


def _run(case: CaseSpec, metric: str):
    phase = get_workload(case.workload).prepare(
        case, RunContext("cpu", FP32, case.seed))
    return run_to_target(phase, PerfCounterTimer(), case.training, case.seed, metric,
                         case.axes.get("early_stopping", 0))


def test_olympic_score_drops_fastest_and_slowest_and_counts_a_miss_as_slowest():
    assert olympic([3.0, 1.0, 2.0, 5.0, 4.0]) == pytest.approx(3.0)
    # One run that did not converge is the slowest, dropped: mean of 2, 3, 4.
    assert olympic([math.inf, 1.0, 2.0, 3.0, 4.0]) == pytest.approx(3.0)
    assert olympic([math.inf, math.inf, 2.0, 3.0, 4.0]) is None  # two misses: no score
    assert olympic([1.0, 2.0]) is None  # too few runs to drop both ends


def test_a_seeded_run_reaches_the_same_target_at_the_same_step_twice():
    spec = TrainingRunSpec(seeds=3, eval_every=128, max_epochs=10, max_time_s=60,
                           target_metric="val_accuracy", target=0.9)
    case = _case("digits_cnn", {"batch_size": 32}, {"width": 8}, spec, seed=7)
    first, second = _run(case, "val_accuracy"), _run(case, "val_accuracy")
    assert first.run.converged and second.run.converged
    assert first.run.steps_to_target == second.run.steps_to_target
    assert [p.metrics for p in first.run.curve] == [p.metrics for p in second.run.curve]
    other = _run(dataclasses.replace(case, seed=8), "val_accuracy")
    assert [p.metrics for p in other.run.curve] != [p.metrics for p in first.run.curve]


class ScriptedPhase(EvaluatedTraining):
    """A phase whose evaluations return a scripted sequence: the stopping rules' input."""

    samples_per_step = 10
    steps_per_epoch = 4

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def step(self) -> object:
        return None

    def evaluate(self) -> dict[str, float]:
        return {"val_accuracy": next(self.values)}

    def mean_train_loss(self) -> float:
        return 1.0


@pytest.mark.parametrize(("patience", "evaluations"), [(3, 6), (4, 7), (0, 8)])
def test_early_stopping_stops_where_the_patience_rule_says(patience, evaluations):
    # Best 0.7 at the third evaluation (a later 0.7 is no improvement); with patience p
    # the run stops at evaluation 3 + p; without early stopping it runs to the cap.
    values = [0.5, 0.6, 0.7, 0.65, 0.69, 0.7, 0.68, 0.71]
    spec = TrainingRunSpec(eval_every=0, max_epochs=8, max_time_s=60)
    trace = run_to_target(ScriptedPhase(values), PerfCounterTimer(), spec, 1, "val_accuracy",
                          patience)
    run = trace.run
    assert len(run.curve) == evaluations
    assert run.stop_reason == ("early_stopping" if patience else "max_epochs")
    if patience:
        assert run.best_metric == 0.7 and run.best_steps == 3 * 4
        assert run.epochs_saved == pytest.approx(8 - evaluations)
        assert run.time_saved_s == pytest.approx((8 - evaluations) * run.wall_s / run.epochs)
    else:
        assert run.best_metric == 0.71 and run.epochs_saved is None
    assert len(trace.step_durations_s) == evaluations * 4


def test_the_target_stops_a_run_at_its_first_evaluation_that_meets_it():
    spec = TrainingRunSpec(eval_every=25, max_epochs=100, max_time_s=60,
                           target_metric="val_accuracy", target=0.69)
    run = run_to_target(ScriptedPhase([0.5, 0.6, 0.7, 0.8]), PerfCounterTimer(), spec, 1,
                        "val_accuracy").run
    # eval_every 25 samples at 10 per step: every 3 steps.
    assert run.converged and run.steps_to_target == 9 and run.samples_to_target == 90
    assert run.epochs_to_target == pytest.approx(9 / 4)
    assert run.time_to_target_s == run.curve[-1].time_s >= run.train_s


def _seed_result(seed: int, seconds: float | None) -> CaseResult:
    """One seed's record as a worker writes it: a real run of the scripted phase (to the
    target, or to the cap), its time to target set to ``seconds``."""
    spec = TrainingRunSpec(eval_every=10, max_epochs=1, max_time_s=60,
                           target_metric="val_accuracy", target=0.9)
    values = [0.95] if seconds is not None else [0.5] * 4
    run = run_to_target(ScriptedPhase(values), PerfCounterTimer(), spec, seed,
                        "val_accuracy").run
    if seconds is not None:
        run.time_to_target_s = seconds
    case = gate_case("digits_cnn/train[optimizer=adam]", [0.01 * (1 + seed / 100)] * 5)
    case.throughput = ThroughputResult.from_timing(case.timing, 10, "samples/s")
    case.time_to_accuracy = TimeToAccuracyResult(
        settings=spec.to_dict(), target=spec.describe_target(), metric="val_accuracy",
        higher_is_better=True, early_stopping_patience=0, runs=[run],
        converged=int(run.converged), score_s=None, score_samples=None, score_steps=None,
        score_epochs=None, method="one seed")
    return case


def test_one_seed_short_of_the_target_is_the_slowest_two_make_the_case_not_converged():
    one_miss = merge_seed_runs([_seed_result(1, 3.0), _seed_result(2, None),
                                _seed_result(3, 1.0), _seed_result(4, 2.0),
                                _seed_result(5, 5.0)])
    assert one_miss.status == "ok"
    assert one_miss.time_to_accuracy.converged == 4
    assert one_miss.time_to_accuracy.score_s == pytest.approx((2.0 + 3.0 + 5.0) / 3)
    assert [r.seed for r in one_miss.time_to_accuracy.runs] == [1, 2, 3, 4, 5]
    two_misses = merge_seed_runs([_seed_result(1, 3.0), _seed_result(2, None),
                                  _seed_result(3, None), _seed_result(4, 2.0),
                                  _seed_result(5, 5.0)])
    assert two_misses.status == STATUS_NOT_CONVERGED
    assert "2 of 5 seeds did not reach val_accuracy >= 0.9" in two_misses.reason
    assert two_misses.time_to_accuracy.score_s is None


IMPOSSIBLE = suite_text(
    benchmark_text("linreg", "train", target="{ val_mse = 0.0 }",
                   training="{ seeds = 3, eval_every = 64, max_epochs = 2, max_time_s = 30 }",
                   matrix='{ method = ["minibatch"] }'), budget=budget_text(timeout_s=120))


@pytest.mark.slow
def test_an_impossible_target_gives_not_converged_through_the_workers(write_suite, tmp_path,
                                                                      capsys):
    out = tmp_path / "run.json"
    # A target not reached fails the run (exit 1) unless only the figures are wanted.
    assert main(["run", str(write_suite(IMPOSSIBLE)), "--out", str(out), "--no-progress",
                 "--quiet"]) == 1
    assert "did not reach their time-to-accuracy target" in capsys.readouterr().err
    (case,) = load_run(out).cases
    assert case.status == STATUS_NOT_CONVERGED
    assert "3 of 3 seeds did not reach val_mse <= 0" in case.reason
    tta = case.time_to_accuracy
    assert [r.seed for r in tta.runs] == [1, 2, 3]
    assert len({r.pid for r in tta.runs}) == 3  # each seed its own worker
    assert all(r.stop_reason == "max_epochs" and not r.converged for r in tta.runs)
    # 256 training points in batches of 32: 8 steps an epoch, an evaluation every 2 steps.
    assert all(r.epochs == 2 and r.steps == 16 and len(r.curve) == 8 for r in tta.runs)
    # The per-step timing is the run's own steps, the first of each seed its cold start.
    assert sum(len(t) for t in case.timing.trial_samples_s) == 3 * (16 - 1)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    report = capsys.readouterr().out
    assert "time to accuracy" in report and "not_converged" in report


def _suite(write_suite, body: str):
    return load_suite(write_suite(body))


@pytest.mark.parametrize(("body", "message"), [
    ('workload = "digits_cnn"\nphase = "infer"\ntarget = { val_accuracy = 0.9 }',
     "cannot run to a target"),
    ('workload = "digits_cnn"\nphase = "train"\ntarget = { val_mse = 1.0 }', "val_mse"),
    ('workload = "digits_cnn"\nphase = "train"\n'
     'target = { val_accuracy = 0.9, macro_f1 = 0.9 }', "expected one metric"),
    ('workload = "digits_cnn"\nphase = "train"\ntarget = { val_accuracy = 0.9 }\n'
     'training = { seeds = 2 }', "training.seeds"),
    ('workload = "digits_cnn"\nphase = "train"\nparams = { lr = 0.1 }\n'
     'matrix = { lr = [0.1, 0.2] }', "set in both params and matrix"),
])
def test_bad_time_to_accuracy_settings_are_refused_in_one_line(write_suite, body, message):
    with pytest.raises(BenchInputError, match=message) as info:
        _suite(write_suite, "[[benchmark]]\n" + body + "\n")
    assert "\n" not in str(info.value)


def test_an_axis_fixed_in_params_holds_in_every_case_and_stays_out_of_the_ids(write_suite):
    suite = _suite(write_suite, '[[benchmark]]\nworkload = "digits_cnn"\nphase = "train"\n'
                                'params = { lr = 0.01, epochs = 2 }\n'
                                'matrix = { batch_size = [16, 32] }\n')
    (bench,) = suite.benchmarks
    assert bench.matrix["lr"] == (0.01,) and bench.params["epochs"] == 2
    assert "lr" not in bench.named_axes


def test_weighted_sampling_draws_each_class_equally_from_an_imbalanced_split():
    x, y, _, _ = tensors("cpu")
    _, y_small = imbalanced(x, y, 0.1)
    counts = torch.bincount(y_small, minlength=10)
    for c in range(10):
        full = int((y == c).sum())
        assert int(counts[c]) == (math.ceil(full * 0.1) if c in MINORITY_CLASSES else full)
    generator = torch.Generator().manual_seed(0)
    order = epoch_order("weighted", y_small, 10)
    drawn = torch.cat([order(generator) for _ in range(20)])
    share = torch.bincount(y_small[drawn], minlength=10).float() / len(drawn)
    assert torch.allclose(share, torch.full((10,), 0.1), atol=0.01), share
    # Uniform sampling keeps the split's own ratio: minority classes near 1:10.
    assert epoch_order("uniform", y_small, 10) is None


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_steps_past_its_horizon_without_raising(name):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = Schedule(name, optimizer, horizon_steps=20, steps_per_epoch=5, lr=0.1)
    lrs = []
    for _ in range(30):
        optimizer.step()
        schedule.step()
        schedule.after_eval(0.5)
        lrs.append(optimizer.param_groups[0]["lr"])
    if name == "constant":
        assert set(lrs) == {0.1}
    elif name in ("warmup_linear", "warmup_cosine", "step"):
        assert lrs[25] < 0.1 * 0.05  # decayed by the end of the horizon
    elif name == "plateau":
        assert lrs[-1] < 0.1  # the metric never improved: reduced


def test_class_report_counts_the_confusion_matrix_and_pools_runs():
    truth = [0, 0, 1, 1, 2, 2]
    guess = [0, 1, 1, 1, 2, 0]
    report = class_report(truth, guess, ["a", "b", "c"])
    assert report.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report.recall == [0.5, 1.0, 0.5]
    assert report.precision == pytest.approx([0.5, 2 / 3, 1.0])
    assert summary_metrics(report, [0, 2]) == pytest.approx(
        {"balanced_accuracy": 2 / 3, "macro_f1": float(np.mean(report.f1)),
         "minority_recall": 0.5})
    both = pooled([report, class_report(truth, truth, ["a", "b", "c"])])
    assert both.confusion == [[3, 1, 0], [0, 4, 0], [1, 0, 3]]
    assert both.recall == pytest.approx([0.75, 1.0, 0.75])


def _tta_case(times: list[float | None]) -> CaseResult:
    return merge_seed_runs([_seed_result(seed, t) for seed, t in enumerate(times, 1)])


def test_gate_judges_time_to_target_over_seeds_and_says_when_seeds_are_too_few():
    from bench.reports.compare import compare_runs
    from bench.reports.gate import Policy, evaluate
    base = _tta_case([1.0, 1.1, 1.2, 1.05, 0.95])
    slower = _tta_case([1.5, 1.65, 1.8, 1.6, 1.45])
    report = evaluate(compare_runs(gate_run(base), gate_run(slower)), Policy(gate_speed=False))
    (finding,) = [f for f in report.regressions if f.check == "time_to_accuracy"]
    assert "time to target x1.5" in finding.text and report.exit_code == 1
    same = _tta_case([1.02, 1.08, 1.15, 1.0, 0.97])
    assert evaluate(compare_runs(gate_run(base), gate_run(same)),
                    Policy(gate_speed=False)).exit_code == 0
    # Three seeds a side: Mann-Whitney's smallest p is 0.1, so no verdict: a failure.
    few = evaluate(compare_runs(gate_run(_tta_case([1.0, 1.1, 1.2])),
                                gate_run(_tta_case([1.0, 1.1, 1.2]))), Policy(gate_speed=False))
    (problem,) = [f for f in few.inconclusive if f.check == "time_to_accuracy"]
    assert "too few seeds to decide" in problem.text and few.exit_code == 1


def test_a_time_to_accuracy_run_under_the_slowdown_knob_says_so(monkeypatch):
    from bench.results.schema import SLOWDOWN_ENV
    from bench.runners.worker import run_case

    monkeypatch.setenv(SLOWDOWN_ENV, "0.2")
    spec = TrainingRunSpec(seeds=3, eval_every=64, max_epochs=2, max_time_s=30,
                           target_metric="val_mse", target=0.0, higher_is_better=False)
    result = run_case(_case("linreg", {"batch_size": 32}, training=spec))
    assert result.injected_slowdown == 0.2
    assert any(w.startswith("injected slowdown") for w in result.warnings), result.warnings
    assert result.timing is not None and result.time_to_accuracy.runs[0].steps == 16
