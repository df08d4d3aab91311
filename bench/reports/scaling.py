"""Scaling of cases trained across ranks (``parallel``, ``world_size``): throughput per
device and in total, weak- and strong-scaling efficiency against world_size 1 of the same
run, exposed communication, stragglers and each rank's memory.

- weak scaling (fixed per-device batch b): thr_N / (N x thr_1), thr_1 the world-1 case
  at batch b;
- strong scaling (fixed global batch B = N x b): T_1 / (N x T_N), T_1 the world-1 case's
  step time at batch B, T_N this case's.

The world-1 reference is the case of the same benchmark and axes in the same parallel
mode, else with ``parallel = none``: a mode's own world-1 case carries its wrapper's cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from bench.reports.text import csv_text
from bench.results.schema import CaseResult, RunRecord

# Axes that tell the cases of one scaling series apart (everything else must match): their
# layout over ranks, whose reference is one process.
SERIES_AXES = ("parallel", "world_size", "tp_size", "sequence_parallel", "batch_size")


@dataclass(frozen=True)
class Scaling:
    case: CaseResult
    weak: float | None = None
    weak_reference: str | None = None
    strong: float | None = None
    strong_reference: str | None = None


def _series_key(case: CaseResult) -> tuple:
    rest = tuple(sorted((k, str(v)) for k, v in case.axes.items() if k not in SERIES_AXES))
    return case.benchmark_key, rest


def _world_one(cases: list[CaseResult], like: CaseResult, batch: int) -> CaseResult | None:
    """The measured world-1 case of ``like``'s series at ``batch``: same mode, else none."""
    key = _series_key(like)
    found = {c.parallel_axis: c for c in cases
             if c.measured and c.timing and c.throughput and _series_key(c) == key
             and c.world_size == 1 and c.batch_size == batch}
    return found.get(like.parallel_axis) or found.get("none")


def scaling(record: RunRecord) -> list[Scaling]:
    rows = []
    for case in record.cases:
        if case.parallel is None or not case.measured or case.timing is None:
            continue
        n = case.parallel.world_size
        batch = case.batch_size
        weak_ref = _world_one(record.cases, case, batch) if batch else None
        # The world-1 case at the global batch: N x b across data-parallel ranks, b where
        # tensor-parallel ranks share one batch.
        data_parallel = case.parallel.data_parallel_size or n
        strong_ref = _world_one(record.cases, case, data_parallel * batch) if batch else None
        weak = strong = None
        if weak_ref is not None and case.throughput is not None:
            weak = case.throughput.value / (n * weak_ref.throughput.value)
        if strong_ref is not None:
            strong = strong_ref.timing.median_s / (n * case.timing.median_s)
        rows.append(Scaling(case, weak, weak_ref.case_id if weak_ref else None,
                            strong, strong_ref.case_id if strong_ref else None))
    return rows


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


HEADERS = ("case", "mode", "ranks", "batch/rank", "global batch", "per device /s",
           "total /s", "weak eff.", "strong eff.", "step ms", "no-sync ms",
           "exposed comm ms", "pp bubble theory / measured / idle", "straggler (median / max)",
           "rank 0 params/grads/optim MiB", "peak RSS per rank MiB")


def _bubble(s: Scaling) -> str:
    """A pipeline's idle share: the schedule's theoretical bubble, the measured one (the
    stages' mean idle share of the schedule's run) and the whole step's idle share
    1 - strong efficiency."""
    pipeline = s.case.details.get("pipeline")
    if not isinstance(pipeline, dict) or "bubble_theoretical" not in pipeline:
        return ""
    measured = s.case.parallel.pipeline_bubble
    return " / ".join((f"{pipeline['bubble_theoretical']:.0%}", _pct(measured), _pct(
        None if s.strong is None else 1 - s.strong)))


def _row(s: Scaling) -> list[str]:
    c, p = s.case, s.case.parallel
    split = p.ranks[0].memory_split if p.ranks else {}
    memory = "/".join(f"{split[k]:.3g}" for k in ("parameters_mib", "gradients_mib",
                                                   "optimizer_state_mib") if k in split)
    exposed = ""
    if p.exposed_communication_s is not None:
        share = p.exposed_communication_s / c.timing.median_s
        interval = "" if not p.exposed_communication_ci_s else \
            " [{:.2g}, {:.2g}]".format(*(x * 1e3 for x in p.exposed_communication_ci_s))
        exposed = f"{p.exposed_communication_s * 1e3:.3g}{interval} ({share:.0%})"
    # The case's throughput (pooled over a time-to-accuracy case's seeds), split per device.
    total = c.throughput.value if c.throughput is not None else p.samples_per_s_total
    return [c.case_id, p.mode, f"{p.world_size} on {p.nnodes} node(s)",
            str(c.batch_size or ""), str(p.global_batch),
            f"{total / p.world_size:.4g}", f"{total:.4g}",
            _pct(s.weak), _pct(s.strong), f"{c.timing.median_s * 1e3:.3g}",
            "" if p.no_sync_step_s is None else f"{p.no_sync_step_s * 1e3:.3g}", exposed,
            _bubble(s), f"{p.straggler_median_spread:.0%} / {p.straggler_max_spread:.0%}", memory,
            ", ".join(f"{r.peak_rss_mib:.0f}" for r in p.ranks if r.peak_rss_mib)]


def render_scaling(record: RunRecord, fmt: str = "github") -> str:
    """The scaling table, or "" when no case trained across ranks."""
    rows = [_row(s) for s in scaling(record)]
    if not rows:
        return ""
    if fmt == "csv":
        return csv_text(list(HEADERS), rows)
    note = ("weak eff. = total throughput / (ranks x the world-1 case's at the same batch "
            "per rank); strong eff. = world-1 step time at the global batch / (ranks x "
            "step time); exposed comm = step - the same step without gradient sync, mean of "
            "paired rounds [95% CI] (tp: the step's share blocked in communication, "
            "profiled); pp "
            "bubble: theory (ranks - 1) / (stages per rank x microbatches + ranks - 1); "
            "measured, the "
            "stages' mean of 1 - (forward and backward chunks) / (the schedule's run); idle "
            "1 - strong eff. (the whole step: bubble, optimizer, tied-weight and loss "
            "communication)")
    table = tabulate(rows, headers=HEADERS, tablefmt=fmt, disable_numparse=True)
    return table + ("" if fmt == "html" else f"\n{note}")
