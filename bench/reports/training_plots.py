"""The HTML report's training plots: eval curves per recipe, time to accuracy across seeds,
confusion-matrix heatmaps and a hyperparameter search's best-so-far curve. Each returns
(title, PNG as base64) pairs, drawn only when the run has the data."""

from __future__ import annotations

import math
from collections import defaultdict

from bench.reports.html_figures import figure, png
from bench.results.schema import CaseResult

MAX_LINES = 10
MAX_HEATMAPS = 6


def _short(case: CaseResult) -> str:
    head, _, rest = case.case_id.partition("[")
    return rest.rstrip("]") or head


def eval_curves(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """The watched metric against training samples, one line per case (its median seed by
    time to target, or its first), the target as a dashed line."""
    groups: dict[str, list[CaseResult]] = defaultdict(list)
    for c in cases:
        if c.time_to_accuracy is not None and c.time_to_accuracy.runs:
            groups[c.benchmark_key].append(c)
    out = []
    for key, group in groups.items():
        tta = group[0].time_to_accuracy
        fig, ax = figure(f"{key}: {tta.metric} while training", "training samples", tta.metric)
        for c in group[:MAX_LINES]:
            runs = sorted(c.time_to_accuracy.runs, key=lambda r: r.time_to_target_s or math.inf)
            run = runs[len(runs) // 2]
            xs = [p.samples for p in run.curve]
            ys = [p.metrics.get(tta.metric, math.nan) for p in run.curve]
            ax.plot(xs, ys, marker=".", linewidth=1, label=f"{_short(c)} (seed {run.seed})")
        target = tta.settings.get("target")
        if target is not None:
            ax.axhline(target, color="gray", linestyle="--", linewidth=0.8, label=tta.target)
        ax.legend(fontsize=5)
        out.append((f"Eval curves: {key}", png(fig)))
    return out


def time_to_accuracy_spread(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """Per benchmark, each case's seeds' wall times to target (a strip plot; a seed that
    missed the target is an x at the top) and its olympic score (a bar)."""
    groups: dict[str, list[CaseResult]] = defaultdict(list)
    for c in cases:
        tta = c.time_to_accuracy
        if tta is not None and tta.settings.get("target_metric"):
            groups[c.benchmark_key].append(c)
    out = []
    for key, group in groups.items():
        fig, ax = figure(f"{key}: time to {group[0].time_to_accuracy.target}",
                         "", "wall seconds to target (evaluations included)")
        finite = [t for c in group for t in c.time_to_accuracy.times_to_target()
                  if math.isfinite(t)]
        top = max(finite, default=1.0) * 1.1
        for i, c in enumerate(group):
            times = c.time_to_accuracy.times_to_target()
            ax.scatter([i] * len(times), [t if math.isfinite(t) else top for t in times],
                       marker="o", s=14, color="tab:blue", alpha=0.7)
            missed = [top for t in times if not math.isfinite(t)]
            if missed:
                ax.scatter([i] * len(missed), missed, marker="x", color="tab:red", s=30)
            if c.time_to_accuracy.score_s is not None:
                ax.hlines(c.time_to_accuracy.score_s, i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(group)), [_short(c)[:28] for c in group], rotation=60,
                      ha="right", fontsize=6)
        out.append((f"Time to accuracy across seeds: {key} (bar: olympic score; "
                    "x: a seed that missed the target)", png(fig)))
    return out


def confusion_heatmaps(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """The confusion matrices of the cases whose weakest class is weakest (at most six)."""
    with_classes = [c for c in cases if c.classes is not None and c.classes.recall]
    ranked = sorted(with_classes, key=lambda c: min(c.classes.recall))[:MAX_HEATMAPS]
    out = []
    for c in ranked:
        report = c.classes
        size = len(report.labels)
        fig, ax = figure(f"{c.case_id[:70]}", "predicted", "true")
        ax.grid(False)
        ax.imshow(report.confusion, cmap="Blues")
        ax.set_xticks(range(size), report.labels, fontsize=6, rotation=90)
        ax.set_yticks(range(size), report.labels, fontsize=6)
        for i in range(size):
            for j in range(size):
                if report.confusion[i][j]:
                    ax.text(j, i, str(report.confusion[i][j]), ha="center", va="center",
                            fontsize=5)
        weakest = min(range(size), key=lambda i: report.recall[i])
        out.append((f"Confusion matrix: {c.case_id} (weakest class {report.labels[weakest]}: "
                    f"recall {report.recall[weakest]:.3f})", png(fig)))
    return out


def search_best_so_far(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """A hyperparameter search's (bench tune) best value after each trial, per study."""
    studies: dict[str, list[tuple[int, float | None, str]]] = defaultdict(list)
    maximize: dict[str, bool] = {}
    for c in cases:
        tune = c.details.get("tune")
        if isinstance(tune, dict) and isinstance(tune.get("trial"), int):
            study = str(tune.get("study"))
            studies[study].append((tune["trial"], tune.get("value"), str(tune.get("state"))))
            maximize[study] = tune.get("direction") == "maximize"
    if not studies:
        return []
    fig, ax = figure("Hyperparameter search: best value so far", "trial", "objective")
    for study, trials in sorted(studies.items()):
        best, xs, ys = None, [], []
        pick = max if maximize[study] else min
        for number, value, state in sorted(trials):
            if state == "complete" and isinstance(value, int | float) and math.isfinite(value):
                best = value if best is None else pick(best, value)
            if best is not None:
                xs.append(number)
                ys.append(best)
        ax.step(xs, ys, where="post", label=study)
    ax.legend(fontsize=6)
    return [("Hyperparameter search: best so far per study (this file's trials)", png(fig))]


PLOTS = (eval_curves, time_to_accuracy_spread, confusion_heatmaps, search_best_so_far)
