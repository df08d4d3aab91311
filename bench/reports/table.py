"""The run report: one row per case, rendered by tabulate (or csv)."""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

from tabulate import tabulate

from bench.measurement.allocator import policy_line
from bench.measurement.fingerprint import machine_name
from bench.measurement.host_probe import describe as describe_probes
from bench.reports.compare import injected_slowdown
from bench.reports.generation import render_generation
from bench.reports.parity import Parity, parity_by_case
from bench.reports.scaling import render_scaling
from bench.reports.serving import render_served_tokens, render_serving
from bench.reports.slo import slo_failures
from bench.reports.text import csv_text
from bench.reports.training import render_training, winners
from bench.results.schema import MEMORY_SPLIT_MIB, STATUS_SKIPPED, CaseResult, RunRecord
from bench.units import MIB

FORMATS = ("github", "plain", "latex", "csv", "html")
HEADERS = ["case", "status", "step ms (median)", "95% CI ms", "CV %", "throughput",
           "x reference (paired 95% CI)", "p99 ms", "cold ms", "peak RSS MiB", "GPU peak MiB",
           "model MiB", "sparsity", "fidelity cos (mean/min)", "TFLOP/s", "MFU measured / spec",
           "params/grads/optim/activations MiB", "accuracy", "target", "vs fp32", "parity",
           "SLO", "samples/J"]


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.4g}"


def _accuracy(case: CaseResult) -> tuple[str, str]:
    if case.accuracy is None:
        return "", ""
    shown = case.accuracy.metrics
    if case.accuracy.task_metric in shown:  # the rest stays in the result file
        shown = {case.accuracy.task_metric: shown[case.accuracy.task_metric]}
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
    verdict = {True: "pass", False: "FAIL", None: ""}[case.accuracy.passed]
    return metrics, verdict


def _parity(parity: Parity | None) -> tuple[str, str]:
    if parity is None:
        return "", ""
    verdict = "pass" if parity.passed else f"FAIL (< {parity.target:.0%})"
    worst = parity.worst_class
    if worst is not None and worst.drop > 0:
        verdict += f"; worst {worst.describe()}"
    return f"{parity.ratio:.4f}", verdict


def _paired(case: CaseResult) -> str:
    """The case's speed-up over its reference from interleaved rounds, e.g.
    ``1.32x (1.28-1.36, 6 rounds)``: above 1, faster than the reference."""
    p = case.vs_reference
    if p is None:
        return ""
    return f"{p.speedup:.3g}x ({p.ci_low:.3g}–{p.ci_high:.3g}, {p.rounds} rounds)"


def _model(case: CaseResult) -> tuple[str, str, str]:
    m = case.model
    size = "" if m is None else f"{m.bytes / MIB:.2f}"
    sparsity = "" if m is None or not m.weight_sparsity else f"{m.weight_sparsity:.0%}"
    if m is not None and m.reference_parameters and m.parameters < m.reference_parameters:
        sparsity = (sparsity + " " if sparsity else "") + \
            f"({1 - m.parameters / m.reference_parameters:.0%} params removed)"
    metrics = case.accuracy.metrics if case.accuracy else {}
    fidelity = ""
    if "fidelity_mean_cos" in metrics:
        fidelity = f"{metrics['fidelity_mean_cos']:.4f}/{metrics['fidelity_min_cos']:.4f}"
    return size, sparsity, fidelity


def _compute(case: CaseResult) -> tuple[str, str, str]:
    c = case.compute
    split = case.details.get("memory_split")
    memory = "" if not split else "/".join(
        f"{split[k]:.3g}" for k in MEMORY_SPLIT_MIB if split.get(k) is not None)
    if c is None:
        return "", "", memory
    spec = "n/a" if c.mfu_spec is None else f"{c.mfu_spec:.1%}"
    return f"{c.achieved_tflops:.3g}", f"{c.mfu_measured:.1%} / {spec}", memory


def _slo(failures: list[str] | None) -> str:
    if failures is None:
        return ""
    return "pass" if not failures else "FAIL: " + "; ".join(failures)


def case_row(case: CaseResult, parity: Parity | None = None,
             slo: list[str] | None = None) -> list[Any]:
    t, thr, mem = case.timing, case.throughput, case.memory
    metrics, verdict = _accuracy(case)
    reason = (case.reason or "").strip().splitlines()[0] if case.reason else ""
    status = case.status if case.status == "ok" else f"{case.status}: {reason}"
    if t and any(w.startswith("unstable") for w in case.warnings):
        status += " (unstable)"
    slowdown = injected_slowdown(case)
    if slowdown is not None:
        status += f" (INJECTED SLOWDOWN +{slowdown:.0%}: BENCH_TEST_SLOWDOWN)"
    gpu = mem.cuda_peak_allocated_mib if mem else None
    return [
        case.case_id,
        status,
        _ms(t.median_s) if t else "",
        f"{_ms(t.ci_low_s)}–{_ms(t.ci_high_s)}" if t else "",
        f"{t.cv * 100:.1f}" if t else "",
        f"{thr.value:.4g} {thr.unit}" if thr else "",
        _paired(case),
        _ms(t.latency_s.get("p99")) if t else "",
        _ms(t.cold_start_s) if t else "",
        f"{mem.peak_rss_mib:.0f}" if mem else "",
        "" if gpu is None else f"{gpu:.0f}",
        *_model(case),
        *_compute(case),
        metrics,
        verdict,
        *_parity(parity),
        _slo(slo),
        _samples_per_joule(case),
    ]


def _samples_per_joule(case: CaseResult) -> str:
    energy = case.energy
    if energy is None or not energy.measured or energy.samples_per_joule is None:
        return ""
    return f"{energy.samples_per_joule:.4g}"


def skipped_line(cases: list[CaseResult]) -> str:
    """The cases this machine cannot run, in one line by reason ("" when none)."""
    reasons = Counter((c.reason or "no reason given").strip().splitlines()[0]
                      for c in cases if c.status == STATUS_SKIPPED)
    if not reasons:
        return ""
    return (f"{sum(reasons.values())} skipped here (not run, not failures): "
            + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common()))


def render_report(record: RunRecord, fmt: str = "github") -> str:
    parities = parity_by_case(record.cases)
    slos = slo_failures(record.cases)
    # Cases this machine cannot run get one line under the table, by reason (csv keeps a
    # row each: it is for programs).
    shown = record.cases if fmt == "csv" else \
        [c for c in record.cases if c.status != STATUS_SKIPPED]
    rows = [case_row(c, parities.get(c.case_id), slos.get(c.case_id)) for c in shown]
    # Columns no case fills (GPU memory on a CPU run, MFU in an inference-variant suite)
    # are left out; the first two always stay.
    keep = [i for i in range(len(HEADERS)) if i < 2 or any(row[i] != "" for row in rows)]
    headers = [HEADERS[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    if fmt == "csv":
        return csv_text(headers, rows)
    counts: dict[str, int] = {}
    for case in record.cases:
        counts[case.status] = counts.get(case.status, 0) + 1
    fp = record.fingerprint
    header = (f"suite {record.run.suite_name} ({record.run.suite_path}), run "
              f"{record.run.run_id} at {record.run.started_at} on {machine_name(fp)}, "
              f"torch {fp.get('packages', {}).get('torch')}, "
              f"{fp.get('threads', {}).get('torch_intraop')} threads\n"
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n"
              + policy_line({c.budget["allocator"] for c in record.cases
                             if isinstance(c.budget.get("allocator"), str)})
              + (f"\n{probes}" if (probes := describe_probes(record.run.host_probes)) else ""))
    table = tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    if fmt != "csv" and (skipped := skipped_line(record.cases)):
        table += f"<p>{html.escape(skipped)}</p>" if fmt == "html" else f"\n{skipped}"
    training = render_training(record, fmt) if fmt != "latex" else ""
    scaled = render_scaling(record, fmt) if fmt != "latex" else ""
    serving = render_serving(record, fmt) if fmt != "latex" else ""
    generation = render_generation(record, fmt) if fmt != "latex" else ""
    tokens = render_served_tokens(record, fmt) if fmt != "latex" else ""
    if fmt == "html":
        return ("".join(f"<p>{html.escape(line)}</p>" for line in header.splitlines()) + table
                + training + "".join(f"<p>{html.escape(line)}</p>" for line in winners(record))
                + scaled + serving + tokens + generation)
    if fmt == "latex":
        return table + "\n"
    if training:
        table += "\n\n" + training + "".join(f"\n{line}" for line in winners(record)) + "\n"
    if scaled:
        table += "\n\nScaling across ranks\n\n" + scaled + "\n"
    if serving:
        table += "\n\nServed (MLPerf LoadGen scenarios)\n\n" + serving + "\n"
        energy = {c.energy.reason for c in record.cases
                  if c.energy is not None and not c.energy.measured}
        table += "".join(f"energy not measurable here: {r}\n" for r in sorted(energy))
    if tokens:
        table += "\n\nServed generation (LoadGen token latencies)\n\n" + tokens + "\n"
    if generation:
        table += "\n\nText generation\n\n" + generation + "\n"
    return f"{header}\n\n{table}\n"
