"""The time-to-accuracy table: one row per evaluated training case, the recipes of each
benchmark ranked by their olympic time to target."""

from __future__ import annotations

import html
import statistics
from collections import Counter
from typing import Any

from tabulate import tabulate

from bench.measurement.stats import compare_seeds
from bench.reports.text import csv_text
from bench.results.schema import CaseResult, RunRecord

HEADERS = ["case", "status", "target", "converged", "time to target s (olympic)",
           "spread s (min–max)", "x best", "samples to target", "epochs to target",
           "step ms (median)", "step x plain", "final (median)", "best − final",
           "balanced acc / macro-F1 / minority recall", "stopped by", "epochs saved"]
# The recipe a technique's extra step time is measured against: the case of the same
# benchmark and axes with these values (class-balanced sampling and its losses cost time).
PLAIN_RECIPE = {"sampling": "uniform", "loss": "ce"}


def _g(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def best_scores(cases: list[CaseResult]) -> dict[str, float]:
    """The lowest olympic time to target in each benchmark (workload/phase:label)."""
    best: dict[str, float] = {}
    for case in cases:
        tta = case.time_to_accuracy
        if tta is not None and tta.score_s is not None:
            key = case.benchmark_key
            best[key] = min(best.get(key, tta.score_s), tta.score_s)
    return best


def _plain_step_ratio(case: CaseResult, by_axes: dict[tuple, CaseResult]) -> str:
    plain = {**case.axes, **{k: v for k, v in PLAIN_RECIPE.items() if k in case.axes}}
    if plain == case.axes or case.timing is None:
        return ""
    other = by_axes.get((case.benchmark_key, tuple(sorted(plain.items()))))
    if other is None or other.timing is None:
        return ""
    return f"{case.timing.median_s / other.timing.median_s:.3g}"


def _classes(case: CaseResult) -> str:
    metrics = case.accuracy.metrics if case.accuracy else {}
    keys = ("balanced_accuracy", "macro_f1", "minority_recall")
    if not all(k in metrics for k in keys):
        return ""
    return " / ".join(f"{metrics[k]:.3f}" for k in keys)


def training_row(case: CaseResult, best: dict[str, float],
                 by_axes: dict[tuple, CaseResult]) -> list[Any]:
    tta = case.time_to_accuracy
    runs = tta.runs
    converged = [r for r in runs if r.converged]
    times = [r.time_to_target_s for r in converged if r.time_to_target_s is not None]
    spread = f"{min(times):.3g}–{max(times):.3g}" if times else ""
    best_here = best.get(case.benchmark_key)
    ratio = "" if tta.score_s is None or not best_here else f"{tta.score_s / best_here:.3g}"
    finals = [r.final_metric for r in runs if r.final_metric is not None]
    gaps = [abs(r.best_metric - r.final_metric) for r in runs
            if r.best_metric is not None and r.final_metric is not None]
    stops = Counter(r.stop_reason for r in runs)
    saved = [r.epochs_saved for r in runs if r.epochs_saved is not None]
    status = case.status if case.status == "ok" else f"{case.status}: {case.reason or ''}"
    return [
        case.case_id, status, tta.target, f"{len(converged)}/{len(runs)}",
        _g(tta.score_s), spread, ratio, _g(tta.score_samples), _g(tta.score_epochs, 3),
        "" if case.timing is None else f"{case.timing.median_s * 1e3:.4g}",
        _plain_step_ratio(case, by_axes),
        f"{tta.metric}={statistics.median(finals):.4g}" if finals else "",
        _g(statistics.mean(gaps), 3) if gaps else "",
        _classes(case),
        ", ".join(f"{reason}×{n}" for reason, n in sorted(stops.items())),
        _g(statistics.mean(saved), 3) if saved else "",
    ]


def render_training(record: RunRecord, fmt: str = "github") -> str:
    """The table of the record's time-to-accuracy cases ("" when it has none)."""
    cases = [c for c in record.cases if c.time_to_accuracy is not None]
    if not cases:
        return ""
    best = best_scores(cases)
    by_axes = {(c.benchmark_key, tuple(sorted(c.axes.items()))): c for c in cases}
    rows = [training_row(c, best, by_axes) for c in cases]
    keep = [i for i in range(len(HEADERS)) if i < 2 or any(row[i] != "" for row in rows)]
    headers = [HEADERS[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    if fmt == "csv":
        return csv_text(headers, rows)
    title = f"time to accuracy ({cases[0].time_to_accuracy.method})"
    table = tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    if fmt == "html":
        return f"<h3>{html.escape(title)}</h3>{table}"
    return f"{title}\n\n{table}\n"


def winners(record: RunRecord) -> list[str]:
    """One line per benchmark: the recipe with the lowest olympic time to target, how much
    sooner than the runner-up (both spreads, a Mann-Whitney p over the seeds), and the one
    with the fewest samples to target."""
    lines = []
    by_key: dict[str, list[CaseResult]] = {}
    for case in record.cases:
        if case.time_to_accuracy is not None and case.time_to_accuracy.score_s is not None:
            by_key.setdefault(case.benchmark_key, []).append(case)
    for key, cases in by_key.items():
        ranked = sorted(cases, key=lambda c: c.time_to_accuracy.score_s)
        first = ranked[0]
        line = f"{key}: {first.case_id} reaches {first.time_to_accuracy.target} first, " \
               f"{first.time_to_accuracy.score_s:.3g} s ({_spread(first)})"
        if len(ranked) > 1:
            second = ranked[1]
            a, b = first.time_to_accuracy, second.time_to_accuracy
            test = compare_seeds(a.times_to_target(), b.times_to_target(), a.score_s, b.score_s)
            line += (f"; runner-up {second.case_id} {b.score_s:.3g} s ({_spread(second)}), "
                     f"x{test.ratio:.3g} (Mann-Whitney p={test.p_value:.2g} over the seeds"
                     + ("" if test.decidable(0.05) else "; too few seeds to decide") + ")")
        by_samples = min(cases, key=lambda c: c.time_to_accuracy.score_samples)
        line += (f"; by samples to target (the same from run to run for the same seeds): "
                 f"{by_samples.case_id}, {by_samples.time_to_accuracy.score_samples:.4g}")
        lines.append(line)
    return lines


def _spread(case: CaseResult) -> str:
    times = [t for t in case.time_to_accuracy.times_to_target() if t != float("inf")]
    return f"seeds {min(times):.3g}–{max(times):.3g} s" if times else "no seed converged"
