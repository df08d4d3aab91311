"""bench tune: hyperparameter search through Optuna over a benchmark's ``search`` space.

Each trial is one case: the benchmark's axes with the trial's sampled values, run like any
other case (isolated workers, one per seed, CPU workers forked from a shared fork server)
and appended to the result file. The study lives in Optuna's journal-file storage, so
several processes (and machines sharing a file system) add trials to one study.

Objectives: ``time_to_target`` (the olympic wall time to target over the trial's seeds; a
seed short of the target counts as the training cap ``max_time_s``), ``samples_to_target``
(the same in training samples; a miss counts as ``max_epochs`` of samples: a figure that
does not depend on what else runs on the machine) and ``final`` (the median final value of
the watched metric). With one or two seeds the mean replaces the olympic score.

Pruning: the trial's first seed reports each evaluation to the parent as it happens (a
JSON-lines file the worker appends to); the watched metric at evaluation k is the trial's
intermediate value at step k (negated when the study minimizes time and the metric is
higher-is-better, so the pruner compares in the study's direction); when the pruner says
so the parent asks the worker to stop (its run ends ``pruned``) and the trial's other
seeds are not run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchInputError
from bench.launch.fork_server import DYNAMO
from bench.launch.launcher import Launcher, LocalLauncher
from bench.launch.merge import merge_seed_runs
from bench.measurement.stats import olympic
from bench.orchestrate.sweep import open_store
from bench.results.journal import open_journal
from bench.results.schema import STATUS_PRUNED, CaseResult
from bench.spec import load_suite
from bench.spec.expand import benchmark_cases
from bench.spec.model import BenchmarkSpec, CaseSpec, SearchDimension

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")
OBJECTIVES = ("time_to_target", "samples_to_target", "final")
POLL_S = 0.05
TUNE_KEY = "tune"  # details key of a trial's case: study, trial number, value, state


@dataclass(frozen=True)
class TuneOptions:
    storage: Path
    study: str
    sampler: str = "tpe"
    trials: int = 20
    pruner: str = "none"
    objective: str = "time_to_target"
    seed: int = 0
    grid_points: int = 4
    seeds: int | None = None  # overrides the benchmark's training.seeds
    benchmark: str | None = None  # a label; default: the suite's benchmark with a search


def _sampler(options: TuneOptions, dims: tuple[SearchDimension, ...]):  # noqa: ANN202
    import optuna  # on use: bench tune only

    if options.sampler == "grid":
        return optuna.samplers.GridSampler({d.axis: list(d.grid(options.grid_points))
                                            for d in dims}, seed=options.seed)
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=options.seed)
    return optuna.samplers.TPESampler(seed=options.seed)


def _pruner(name: str):  # noqa: ANN202
    import optuna  # on use: bench tune only

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def _suggest(trial: Any, dims: tuple[SearchDimension, ...]) -> dict[str, Any]:
    values = {}
    for d in dims:
        if d.choices is not None:
            values[d.axis] = trial.suggest_categorical(d.axis, list(d.choices))
        elif d.integer:
            values[d.axis] = trial.suggest_int(d.axis, int(d.low), int(d.high), log=d.log)
        else:
            values[d.axis] = trial.suggest_float(d.axis, d.low, d.high, log=d.log)
    return values


def searched_benchmark(suite: Any, label: str | None, source: str) -> BenchmarkSpec:
    found = [b for b in suite.benchmarks if b.search and (label is None or b.label == label)]
    if not found:
        valid = [b.label or f"benchmark[{i}]" for i, b in enumerate(suite.benchmarks)
                 if b.search]
        raise BenchInputError(source, "no benchmark with a search table" +
                              (f" labelled {label!r}" if label else ""), key="--benchmark",
                              valid=", ".join(valid) or "a benchmark with search = {...}")
    bench = found[0]
    if bench.training is None:
        raise BenchInputError(source, "bench tune needs an evaluated training run",
                              key="training", valid="target = {...} and/or training = {...}")
    if len(benchmark_cases(bench)) != 1:
        raise BenchInputError(source, "bench tune searches one case: the matrix expands "
                              f"to {len(benchmark_cases(bench))}", key="matrix",
                              valid="one value per axis (the search table varies the rest)")
    return bench


def direction(objective: str, higher_is_better: bool) -> str:
    if objective == "final":
        return "maximize" if higher_is_better else "minimize"
    return "minimize"


def objective_value(case: CaseResult, objective: str) -> float | None:
    """The trial's value from its merged record (None: nothing to score)."""
    tta = case.time_to_accuracy
    if tta is None or not tta.runs:
        return None
    settings = tta.settings
    if objective == "final":
        finals = [r.final_metric for r in tta.runs if r.final_metric is not None]
        return statistics.median(finals) if finals else None
    if objective == "time_to_target":
        values = [r.time_to_target_s if r.converged else settings["max_time_s"]
                  for r in tta.runs]
    else:
        values = [r.samples_to_target if r.converged else
                  settings["max_epochs"] * r.samples / max(r.epochs, 1e-12) for r in tta.runs]
    score = olympic(values) if len(values) >= 3 else None
    return score if score is not None else statistics.mean(values)


class _Watcher:
    """Reads the first seed's evaluations as the worker writes them, reports them to the
    trial and asks the worker to stop when the pruner says so."""

    def __init__(self, trial: Any, path: Path, sign: float, metric: str) -> None:
        self.trial, self.path, self.sign, self.metric = trial, path, sign, metric
        self.seen = 0
        self.pruned_at: int | None = None

    def poll(self) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        for line in lines[self.seen:]:
            if not line.endswith("}"):
                break  # a line still being written
            point = json.loads(line)
            self.seen += 1
            value = point["metrics"].get(self.metric)
            if value is None or self.pruned_at is not None:
                continue
            self.trial.report(self.sign * float(value), self.seen)
            if self.trial.should_prune():
                self.pruned_at = self.seen
                Path(str(self.path) + ".stop").touch()


def _run_seed(case: CaseSpec, launcher: Launcher, watcher: _Watcher | None) -> CaseResult:
    if watcher is None:
        return launcher.run_once(case)
    box: dict[str, CaseResult] = {}
    thread = threading.Thread(target=lambda: box.update(result=launcher.run_once(case)))
    thread.start()
    while thread.is_alive():
        watcher.poll()
        thread.join(POLL_S)
    watcher.poll()
    return box["result"]


def _trial_case(base: CaseSpec, values: dict[str, Any], options: TuneOptions) -> CaseSpec:
    training = base.training
    if options.seeds is not None:
        training = dataclasses.replace(training, seeds=options.seeds)
    named = tuple(dict.fromkeys([*(base.id_axes or ()), *values]))
    return dataclasses.replace(base, axes={**base.axes, **values}, id_axes=named,
                               training=training)


def _run_trial(trial: Any, case: CaseSpec, options: TuneOptions, launcher: Launcher,
               sign: float, metric: str, scratch: Path) -> CaseResult:
    results = []
    watcher = None
    for index, seed in enumerate(case.training.seed_list()):
        seeded = dataclasses.replace(case, seed=seed)
        if index == 0 and options.pruner != "none":
            path = scratch / f"trial{trial.number}.jsonl"
            watcher = _Watcher(trial, path, sign, metric)
            seeded = dataclasses.replace(seeded, progress_file=str(path))
        results.append(_run_seed(seeded, launcher, watcher if index == 0 else None))
        if results[-1].status not in ("ok", "contended", "diverged") or (
                watcher is not None and watcher.pruned_at is not None):
            break
    merged = merge_seed_runs(results)
    if watcher is not None and watcher.pruned_at is not None:
        merged.status = STATUS_PRUNED
        merged.reason = (f"pruned by the {options.pruner} pruner at evaluation "
                         f"{watcher.pruned_at} of seed {case.training.first_seed}")
    return merged


def tune(suite_path: str | Path, out: str | Path, options: TuneOptions,
         progress: Callable[[str], None] | None = None) -> Any:
    """Run ``options.trials`` trials into the study (adding to what other processes add)
    and each trial's case into ``out``; returns the Optuna study."""
    import optuna  # on use: bench tune only

    suite = load_suite(suite_path)
    bench = searched_benchmark(suite, options.benchmark, str(suite_path))
    (base,) = benchmark_cases(bench)
    from bench.workloads import get_workload  # the registry imports torch: on use

    metric, higher = get_workload(base.workload).watched_metric(base)
    study_direction = direction(options.objective, higher)
    sign = 1.0 if (study_direction == "maximize") == higher else -1.0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=options.study, storage=open_journal(options.storage),
                                sampler=_sampler(options, bench.search),
                                pruner=_pruner(options.pruner), direction=study_direction,
                                load_if_exists=True)
    for key, value in (("objective", options.objective), ("metric", metric),
                       ("suite", str(suite_path)), ("benchmark", bench.label or "")):
        study.set_user_attr(key, value)
    store = open_store(suite, Path(out), resume=Path(out).exists(), overwrite=False,
                       select=None)

    def objective(trial: Any) -> float:
        started = time.perf_counter()
        case = _trial_case(base, _suggest(trial, bench.search), options)
        trial.set_user_attr("sampler", options.sampler)
        trial.set_user_attr("case_id", case.case_id)
        merged = _run_trial(trial, case, options, launcher, sign, metric, scratch)
        value = objective_value(merged, options.objective)
        seconds = time.perf_counter() - started
        tta = merged.time_to_accuracy
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("converged", bool(tta and tta.converged == len(tta.runs)))
        merged.details[TUNE_KEY] = {"study": options.study, "trial": trial.number,
                                    "sampler": options.sampler, "pruner": options.pruner,
                                    "objective": options.objective, "value": value,
                                    "direction": study_direction,
                                    "state": "pruned" if merged.status == STATUS_PRUNED
                                    else "complete", "seconds": seconds}
        store.append(dataclasses.replace(merged, case_id=f"{case.case_id}#{options.study}"
                                                         f".{trial.number}"))
        if progress:
            progress(f"trial {trial.number}: {merged.status} value={value}")
        if merged.status == STATUS_PRUNED:
            raise optuna.TrialPruned()
        if value is None:
            raise RuntimeError(f"trial {trial.number}: {merged.status}: {merged.reason}")
        return value

    with LocalLauncher(preload=(DYNAMO,)) as launcher, \
            tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        scratch = Path(tmp)
        study.optimize(objective, n_trials=options.trials, catch=(RuntimeError,))
    return study
