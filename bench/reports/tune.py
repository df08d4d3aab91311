"""What a hyperparameter search found, read from its Optuna journal: per study the best
value, trials to the first converged trial, the best-so-far curve and what pruning saved;
across studies of several samplers (each run with several study seeds), a Mann-Whitney U
test on the best values they reached, as kurobako ranks solvers."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench.errors import BenchInputError
from bench.measurement.stats import mann_whitney_smallest_p
from bench.results.journal import open_journal


@dataclass
class StudySummary:
    name: str
    sampler: str
    direction: str
    objective: str
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_case: str | None
    trials_to_target: int | None  # 1-based count of trials up to the first converged one
    best_so_far: list[float | None] = field(default_factory=list)  # after each trial
    seconds: float = 0.0
    pruned_seconds: float = 0.0
    saved_seconds: float | None = None  # pruned trials x mean complete trial - their time


def load_studies(storage: str | Path, names: list[str] | None = None) -> list[Any]:
    import optuna  # on use: bench tune only

    if not Path(storage).is_file():
        raise BenchInputError(str(storage), "no such journal file", key="--storage")
    journal = open_journal(storage)
    available = [s.study_name for s in optuna.get_all_study_summaries(journal)]
    names = names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BenchInputError(str(storage), f"no study {unknown[0]!r}", key="--study",
                              valid=", ".join(available) or "(the journal holds none)")
    return [optuna.load_study(study_name=n, storage=journal) for n in names]


def summarize_study(study: Any) -> StudySummary:
    import optuna  # on use: bench tune-report only

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    state = optuna.trial.TrialState
    complete = [t for t in trials if t.state == state.COMPLETE]
    pruned = [t for t in trials if t.state == state.PRUNED]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best_so_far: list[float | None] = []
    best = None
    for t in trials:
        if t.state == state.COMPLETE and t.value is not None:
            best = t.value if best is None else (max if maximize else min)(best, t.value)
        best_so_far.append(best)
    first = next((i for i, t in enumerate(trials, 1) if t.user_attrs.get("converged")), None)
    seconds = [t.user_attrs.get("seconds", 0.0) for t in trials]
    done_s = [t.user_attrs.get("seconds", 0.0) for t in complete]
    pruned_s = sum(t.user_attrs.get("seconds", 0.0) for t in pruned)
    saved = len(pruned) * statistics.mean(done_s) - pruned_s if pruned and done_s else None
    best_trial = study.best_trial if complete else None
    sampler = next((t.user_attrs["sampler"] for t in trials if "sampler" in t.user_attrs), "")
    return StudySummary(
        name=study.study_name, sampler=sampler, direction=study.direction.name.lower(),
        objective=study.user_attrs.get("objective", ""), complete=len(complete),
        pruned=len(pruned), failed=len(trials) - len(complete) - len(pruned),
        best_value=None if best_trial is None else best_trial.value,
        best_params={} if best_trial is None else dict(best_trial.params),
        best_case=None if best_trial is None else best_trial.user_attrs.get("case_id"),
        trials_to_target=first, best_so_far=best_so_far, seconds=sum(seconds),
        pruned_seconds=pruned_s, saved_seconds=saved)


def _curve(values: list[float | None]) -> str:
    """The best-so-far value after trial 1, 5, 10, ... and the last."""
    marks = sorted({1, *range(5, len(values) + 1, 5), len(values)})
    return ", ".join(f"{m}: {values[m - 1]:.4g}" for m in marks
                     if values and values[m - 1] is not None)


def render_summaries(summaries: list[StudySummary]) -> str:
    rows = [[s.name, s.sampler, f"{s.objective} ({s.direction})",
             f"{s.complete}/{s.pruned}/{s.failed}",
             "" if s.best_value is None else f"{s.best_value:.4g}",
             ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in s.best_params.items()),
             "" if s.trials_to_target is None else str(s.trials_to_target),
             _curve(s.best_so_far), f"{s.seconds:.0f}",
             "" if s.saved_seconds is None else
             f"{s.pruned_seconds:.0f} spent, ~{s.saved_seconds:.0f} saved"]
            for s in summaries]
    return tabulate(rows, headers=["study", "sampler", "objective", "complete/pruned/failed",
                                   "best", "best params", "trials to target",
                                   "best so far (after trial n)", "compute s",
                                   "pruned trials"], tablefmt="github", disable_numparse=True)


def compare_samplers(summaries: list[StudySummary]) -> list[str]:
    """Each pair of samplers: their best values over study seeds, and a two-sided
    Mann-Whitney U on them (at the full budget and at half of it)."""
    from scipy.stats import mannwhitneyu  # on use: a comparison of several studies

    groups: dict[str, list[StudySummary]] = {}
    for s in summaries:
        groups.setdefault(s.sampler, []).append(s)
    lines = []
    for (a, sa), (b, sb) in itertools.combinations(sorted(groups.items()), 2):
        for label, at in (("full budget", None), ("half budget", 0.5)):
            va, vb = _best_at(sa, at), _best_at(sb, at)
            if len(va) < 2 or len(vb) < 2:
                lines.append(f"{a} vs {b} ({label}): too few studies per sampler "
                             f"({len(va)} and {len(vb)}) for a test")
                continue
            p = float(mannwhitneyu(va, vb, alternative="two-sided").pvalue) \
                if len(set(va + vb)) > 1 else 1.0
            floor = mann_whitney_smallest_p(len(va), len(vb))
            lines.append(f"{a} vs {b} ({label}): best values {_list(va)} vs {_list(vb)}; "
                         f"medians {statistics.median(va):.4g} vs {statistics.median(vb):.4g}; "
                         f"Mann-Whitney U p = {p:.3g} over {len(va)} + {len(vb)} study seeds"
                         + (f" (the smallest p {len(va)} + {len(vb)} can give is {floor:.2g}: "
                            "more study seeds to decide at 0.05)" if floor >= 0.05 else ""))
    return lines


def _best_at(studies: list[StudySummary], fraction: float | None) -> list[float]:
    out = []
    for s in studies:
        curve = s.best_so_far
        if not curve:
            continue
        index = len(curve) - 1 if fraction is None else max(0, math.ceil(len(curve) * fraction) - 1)
        if curve[index] is not None:
            out.append(curve[index])
    return out


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
