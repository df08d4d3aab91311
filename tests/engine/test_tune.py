"""Bench tune, hyperparameter search through Optuna: search tables, trials as
isolated cases, a study shared by two processes through the journal file, pruning that
stops the worker at an evaluation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import BenchInputError
from bench.results.store import load_run
from bench.spec import load_suite
from bench.spec.model import SearchDimension
from tests.builders import benchmark_text, budget_text, suite_text

ROOT = Path(__file__).resolve().parents[2]

LINREG = suite_text(benchmark_text(
    "linreg", "train", label="search", target="{ val_mse = 0.0115 }",
    training="{ seeds = 3, eval_every = 64, max_epochs = 20, max_time_s = 20 }",
    params="{ batch_size = 16, threads = 1 }",
    search='{ lr = { low = 0.01, high = 0.5, log = true }, method = ["sgd", "minibatch"] }'),
    budget=budget_text(timeout_s=60))


def test_search_tables_are_checked_like_the_axes_they_set(write_suite):
    suite = load_suite(write_suite(LINREG))
    (bench,) = suite.benchmarks
    lr, method = bench.search
    assert (lr.axis, lr.low, lr.high, lr.log) == ("lr", 0.01, 0.5, True)
    assert method.choices == ("sgd", "minibatch")
    assert lr.grid(3) == pytest.approx((0.01, 0.0707107, 0.5))
    assert SearchDimension("epochs", low=1, high=4, integer=True).grid(3) == (1, 2, 4)
    for bad, message in (('method = ["newton"]', "method"),
                         ("lr = { low = 0.5, high = 0.1 }", "bad range"),
                         ("lr = { low = 0.0, high = 0.1, log = true }", "too small"),
                         ('method = { low = 1, high = 2 }', "numeric axis"),
                         ("momentum = [0.9]", "unknown key")):
        text = LINREG.replace(
            'search = { lr = { low = 0.01, high = 0.5, log = true }, method = ["sgd", '
            '"minibatch"] }', f"search = {{ {bad} }}")
        with pytest.raises(BenchInputError, match=message):
            load_suite(write_suite(text))


def _tune(suite: Path, storage: Path, out: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "tune", str(suite), "--sampler", "random",
         "--seed", str(seed), "--trials", "2", "--seeds", "1", "--study", "shared",
         "--objective", "samples_to_target", "--storage", str(storage), "--out", str(out),
         "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


@pytest.mark.slow
def test_two_processes_add_their_trials_to_one_journal_study(write_suite, tmp_path):
    import optuna

    from bench.results.journal import open_journal

    suite = write_suite(LINREG)
    storage = tmp_path / "study.journal"
    procs = [_tune(suite, storage, tmp_path / f"p{i}.json", seed=i) for i in range(2)]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    study = optuna.load_study(study_name="shared", storage=open_journal(storage))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    recorded = []
    for i in range(2):
        cases = load_run(tmp_path / f"p{i}.json").cases
        assert len(cases) == 2  # each trial an isolated case in its process's file
        recorded += [c.details["tune"]["trial"] for c in cases]
        assert all(c.time_to_accuracy is not None and c.worker.get("pid") for c in cases)
    assert sorted(recorded) == [0, 1, 2, 3]
    report = subprocess.run([sys.executable, "-m", "bench", "tune-report", str(storage)],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "shared" in report and "4/0/0" in report


DIGITS = suite_text(benchmark_text(
    "digits_cnn", "train", target="{ val_accuracy = 0.999 }",
    training="{ seeds = 3, eval_every = 64, max_epochs = 5, max_time_s = 30 }",
    params="{ batch_size = 32, width = 8 }", search="{ lr = { low = 0.001, high = 0.01 } }"),
    budget=budget_text(timeout_s=60))


@pytest.mark.slow
def test_a_pruned_trial_stops_its_worker_at_an_evaluation_and_skips_its_other_seeds(
        write_suite, tmp_path):
    import optuna

    from bench.launch.launcher import LocalLauncher
    from bench.orchestrate.tune import TuneOptions, _run_trial, _trial_case
    from bench.spec.expand import benchmark_cases

    (bench,) = load_suite(write_suite(DIGITS)).benchmarks
    (base,) = benchmark_cases(bench)
    options = TuneOptions(storage=tmp_path / "j", study="s", pruner="median")
    # A pruner that prunes at the first reported value: the worker must stop early.
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=-2.0))
    trial = study.ask()
    case = _trial_case(base, {"lr": 0.005}, options)
    with LocalLauncher() as launcher:
        merged = _run_trial(trial, case, options, launcher, sign=-1.0, metric="val_accuracy",
                            scratch=tmp_path)
    assert merged.status == "pruned" and "pruned by the median pruner" in merged.reason
    (run,) = merged.time_to_accuracy.runs  # seeds 2 and 3 never ran
    assert run.stop_reason == "pruned" and run.seed == 1
    full = 5 * (1437 // 32) // 2  # evaluations of the whole run: every 2 steps
    assert 1 <= len(run.curve) < full / 2
    reported = trial.storage.get_trial(trial._trial_id).intermediate_values
    assert reported and all(v == pytest.approx(-p.metrics["val_accuracy"])
                            for v, p in zip(reported.values(), run.curve, strict=False))
    lines = (tmp_path / f"trial{trial.number}.jsonl").read_text().splitlines()
    assert [json.loads(line)["steps"] for line in lines] == [p.steps for p in run.curve]
    assert dataclasses.asdict(run)["curve"][0]["samples"] == 64


@pytest.mark.slow
def test_a_grid_search_visits_every_point_of_the_grid_once(write_suite, tmp_path):
    from bench.orchestrate.tune import TuneOptions, tune
    from bench.reports.tune import summarize_study

    options = TuneOptions(storage=tmp_path / "grid.journal", study="grid", sampler="grid",
                          trials=4, grid_points=2, seeds=1, objective="samples_to_target")
    study = tune(write_suite(LINREG), tmp_path / "grid.json", options)
    visited = sorted((t.params["method"], round(t.params["lr"], 6)) for t in study.trials)
    assert visited == [("minibatch", 0.01), ("minibatch", 0.5), ("sgd", 0.01), ("sgd", 0.5)]
    summary = summarize_study(study)
    assert summary.complete == 4 and len(summary.best_so_far) == 4
    assert summary.best_value == min(t.value for t in study.trials)
    cases = load_run(tmp_path / "grid.json").cases
    assert sorted(c.details["tune"]["trial"] for c in cases) == [0, 1, 2, 3]
