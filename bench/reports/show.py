"""``bench show RUN.json [CASE]``: one run's cases in a line each, or one case whole: how
its figure was taken (provenance), its raw samples as a text histogram, its percentiles,
memory, accuracy, and the worker's stderr tail. Nothing is measured here."""

from __future__ import annotations

import math
import statistics

from bench.errors import BenchInputError
from bench.results.schema import CaseResult, RunRecord

HISTOGRAM_BINS = 12
HISTOGRAM_WIDTH = 40


def find_case(record: RunRecord, wanted: str, source: str) -> CaseResult:
    """The case whose id is ``wanted``, else the only one whose id contains it."""
    exact = [c for c in record.cases if c.case_id == wanted]
    matches = exact or [c for c in record.cases if wanted in c.case_id]
    if len(matches) == 1:
        return matches[0]
    ids = [c.case_id for c in (matches or record.cases)]
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    raise BenchInputError(source, f"{'no' if not matches else len(matches)} cases match "
                          f"{wanted!r}", key="CASE", valid=f"one case id or a part of it: {shown}")


def histogram(samples: list[float], bins: int = HISTOGRAM_BINS,
              width: int = HISTOGRAM_WIDTH) -> list[str]:
    """Rows ``low-high ms | ### count`` over equal-width bins of the samples (seconds)."""
    values = [s * 1e3 for s in samples if math.isfinite(s)]
    if not values:
        return ["(no samples)"]
    low, high = min(values), max(values)
    if high == low:
        return [f"{low:.4g} ms | {'#' * width} {len(values)}"]
    step = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / step))] += 1
    most = max(counts)
    return [f"{low + i * step:9.4g}-{low + (i + 1) * step:<9.4g} ms | "
            f"{'#' * max(1 if n else 0, round(n / most * width))} {n}"
            for i, n in enumerate(counts)]


def render_run(record: RunRecord) -> str:
    run = record.run
    lines = [f"run {run.run_id}: suite {run.suite_name} ({run.suite_path}, sha256 "
             f"{run.suite_sha256[:12]}), started {run.started_at}",
             f"command: {' '.join(run.command)}", ""]
    for c in record.cases:
        figure = f"{c.timing.median_s * 1e3:.4g} ms" if c.timing else ""
        lines.append(f"{c.status:<13} {figure:>12}  {c.case_id}"
                     + (f"  ({c.reason})" if c.reason and c.status != "ok" else ""))
    lines.append("")
    lines.append("bench show RUN.json CASE: one case whole (CASE: its id or a part of it)")
    return "\n".join(lines) + "\n"


def render_case(record: RunRecord, case: CaseResult) -> str:
    fp = record.fingerprint
    git = fp.get("git") if isinstance(fp.get("git"), dict) else {}
    lines = [f"case {case.case_id}", f"status: {case.status}"
             + (f" ({case.reason})" if case.reason else ""),
             f"run {record.run.run_id} of suite {record.run.suite_name}, finished "
             f"{case.finished_at}, commit {git.get('commit', '?')}"
             + (" (dirty)" if git.get("dirty") else ""),
             f"worker: {case.worker}" if case.worker else "worker: none recorded",
             f"mode: {case.mode or 'none named (the first mode that claims the case)'}"]
    t = case.timing
    if t is not None:
        samples = [s for trial in t.trial_samples_s for s in trial]
        lines += ["", "How the figure was taken:",
                  f"  step: {t.step_description}",
                  f"  timer: {t.timer} ({t.timer_description})",
                  f"  warm-up: {t.warmup_iterations} iterations in {t.warmup_s:.3g} s "
                  f"(steady: {t.warmup_steady}); cold start {t.cold_start_s * 1e3:.4g} ms",
                  f"  trials: {len(t.trial_means_s)} x {t.iters_per_trial} steps "
                  f"({t.trial_timing}), stopped by {t.stop_reason}",
                  f"  statistic: {t.statistic}",
                  f"  median {t.median_s * 1e3:.4g} ms, {t.ci_level:.0%} CI "
                  f"{t.ci_low_s * 1e3:.4g}-{t.ci_high_s * 1e3:.4g} ms ({t.ci_method}), "
                  f"CV {t.cv:.1%}",
                  "  percentiles: " + ", ".join(f"{k} {v * 1e3:.4g} ms"
                                                for k, v in t.latency_s.items()),
                  "", f"Raw samples ({len(samples)}, {t.trial_timing}: "
                  + ("a duration per step" if t.trial_timing == "per_iteration"
                     else "a block's mean per trial") + "):",
                  *("  " + row for row in histogram(samples)),
                  "", "Trial means (ms): " + ", ".join(f"{m * 1e3:.4g}" for m in t.trial_means_s)]
        if len(t.trial_means_s) > 1:
            lines.append(f"  spread of trial means: {statistics.stdev(t.trial_means_s) * 1e3:.3g}"
                         " ms (sd)")
    if case.throughput is not None:
        lines.append(f"throughput: {case.throughput.value:.4g} {case.throughput.unit}")
    if case.memory is not None:
        peak, kind = case.memory.peak()
        lines.append(f"memory: {kind} {peak:.4g} MiB" if peak else "memory: none recorded")
    if case.accuracy is not None:
        lines.append("accuracy: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                              case.accuracy.metrics.items())
                     + {True: " (targets met)", False: " (targets MISSED)", None: ""}[
                         case.accuracy.passed])
    if case.interference is not None:
        lines.append(f"interference: {case.interference}")
    lines += [f"warning: {w}" for w in case.warnings]
    lines += ["", "stderr tail:", case.stderr_tail.rstrip() if case.stderr_tail else "(empty)"]
    return "\n".join(lines) + "\n"
