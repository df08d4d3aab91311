"""Scenario cases (LoadGen, bench.measurement.serving): their table in ``bench report`` and
their plots in the HTML report (latency CDF per variant, QPS against latency with the
bound). Figures are LoadGen's, read from the records; nothing is measured here."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tabulate import tabulate

from bench.reports.html_figures import figure, png
from bench.reports.parity import parity_by_case
from bench.reports.text import csv_text
from bench.results.schema import CaseResult, EnergyResult, RunRecord

HEADERS = ("case", "scenario", "p50 ms", "p90 ms", "p99 ms", "samples/s", "capacity q/s",
           "bound", "bound met", "LoadGen", "mean batch", "J/sample", "parity")


def served(record: RunRecord) -> list[CaseResult]:
    return [c for c in record.cases if c.serving is not None]


def energy_text(energy: EnergyResult | None) -> str:
    if energy is None:
        return ""
    if not energy.measured or energy.joules_per_sample is None:
        return "not measurable here"
    return f"{energy.joules_per_sample:.3g}"


def _row(case: CaseResult, parity: Any) -> list[str]:
    sv = case.serving
    run = sv.headline_run
    lat = run.latency_ms
    bound = sv.bound_text()
    verdict = run.validity + ("" if run.early_stopping_met is not False
                              else " (early stopping not met)")
    return [case.case_id, sv.scenario, f"{lat['p50']:.4g}", f"{lat['p90']:.4g}",
            f"{lat['p99']:.4g}", f"{run.samples_per_s:.4g}",
            "" if sv.capacity_qps is None else f"{sv.capacity_qps:.4g}", bound,
            "yes" if run.meets_bound else "NO", verdict, f"{run.mean_batch:.3g}",
            energy_text(run.energy),
            "" if parity is None or parity.ratio is None else f"{parity.ratio:.3f}"]


def render_serving(record: RunRecord, fmt: str = "github") -> str:
    """The scenario table, or "" when no case ran a LoadGen scenario."""
    cases = served(record)
    if not cases:
        return ""
    parities = parity_by_case(record.cases)
    rows = [_row(c, parities.get(c.case_id)) for c in cases if c.measured]
    if fmt == "csv":
        return csv_text(list(HEADERS), rows)
    note = ("latencies: LoadGen's, issue to completion; samples/s: LoadGen's completed rate "
            "(server: at the headline run, the capacity's where searched); capacity: the "
            "scheduled rate of the fastest server run that met the bound; bound met: the "
            "percentile within the bound with LoadGen's minimum duration and queries met; "
            "LoadGen: its own verdict, which adds early stopping")
    table = tabulate(rows, headers=HEADERS, tablefmt=fmt, disable_numparse=True)
    return table + ("" if fmt == "html" else f"\n{note}")


TOKEN_HEADERS = ("case", "scenario", "TTFT p50 ms", "TTFT bound-p ms", "TPOT p50 ms",
                 "TPOT bound-p ms", "tokens/s", "requests/s", "capacity req/s", "goodput req/s",
                 "met bounds", "bound", "bound met", "mean batch")
TOKEN_NOTE = ("served generation (LoadGen token latencies): TTFT from LoadGen's issue to the "
              "batch's first new token on the host, TPOT (latency - TTFT) / (tokens - 1) per "
              "request, LoadGen's percentiles (bound-p: the bound's percentile); tokens/s: "
              "LoadGen's completed tokens per second; capacity: the scheduled rate of the "
              "fastest server run that met both bounds; goodput: requests/s x the share of "
              "requests whose own TTFT and TPOT met both bounds (met bounds: that share)")


def _token_row(case: CaseResult) -> list[str]:
    sv = case.serving
    run = sv.headline_run
    key = sv.bound_percentile

    def ms(values: dict[str, float] | None, k: str) -> str:
        return "" if values is None or k not in values else f"{values[k]:.4g}"

    met = "" if run.requests_meeting_bounds is None or not run.samples else \
        f"{run.requests_meeting_bounds}/{run.samples}"
    return [case.case_id, sv.scenario, ms(run.ttft_ms, "p50"), ms(run.ttft_ms, key),
            ms(run.tpot_ms, "p50"), ms(run.tpot_ms, key),
            "" if run.tokens_per_s is None else f"{run.tokens_per_s:.4g}",
            f"{run.samples_per_s:.4g}",
            "" if sv.capacity_qps is None else f"{sv.capacity_qps:.4g}",
            "" if run.goodput_per_s is None else f"{run.goodput_per_s:.4g}", met,
            sv.bound_text(), "yes" if run.meets_bound else "NO", f"{run.mean_batch:.3g}"]


def render_served_tokens(record: RunRecord, fmt: str = "github") -> str:
    """Served generation's token table, or "" when no case served tokens."""
    rows = [_token_row(c) for c in served(record) if c.measured and c.serving.serves_tokens]
    if not rows:
        return ""
    if fmt == "csv":
        return csv_text(list(TOKEN_HEADERS), rows)
    table = tabulate(rows, headers=TOKEN_HEADERS, tablefmt=fmt, disable_numparse=True)
    return table + ("" if fmt == "html" else f"\n{TOKEN_NOTE}")


def latency_cdf(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """Per benchmark and scenario: the CDF of each variant's per-sample latency (the SUT's
    raw samples of the headline run)."""
    groups: dict[tuple[str, str], list[CaseResult]] = defaultdict(list)
    for c in cases:
        if c.serving is not None and c.measured and c.serving.latency_samples_s:
            groups[(c.benchmark_key, c.serving.scenario)].append(c)
    out = []
    for (bench, scenario), members in sorted(groups.items()):
        fig, ax = figure(f"{bench} {scenario}: latency CDF", "latency (ms)", "fraction of samples")
        for c in members:
            xs = sorted(v * 1e3 for v in c.serving.latency_samples_s)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=c.case_id.partition("[")[2].rstrip("]"))
        ax.legend(fontsize=5)
        out.append((f"Latency CDF: {bench} {scenario}", png(fig)))
    return out


def qps_vs_latency(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """Server runs (capacity probes): the bound percentile's latency against the scheduled
    rate, per variant, with the bound as a line."""
    groups: dict[str, list[CaseResult]] = defaultdict(list)
    for c in cases:
        if c.serving is not None and c.measured and c.serving.scenario == "server":
            groups[c.benchmark_key].append(c)
    out = []
    for bench, members in sorted(groups.items()):
        settings = members[0].serving.settings
        key = members[0].serving.bound_percentile
        fig, ax = figure(f"{bench}: {key} latency against queries/s", "scheduled queries/s",
                         f"{key} latency (ms)")
        for c in members:
            points = sorted((r.scheduled_samples_per_s or r.target_qps or 0.0,
                             r.latency_ms.get(key, r.latency_ms["p99"]))
                            for r in c.serving.runs)
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=c.case_id.partition("[")[2].rstrip("]"))
        ax.axhline(float(settings.get("latency_bound_ms", 0)), linestyle="--", color="red")
        ax.set_yscale("log")
        ax.legend(fontsize=5)
        out.append((f"Server: latency against load: {bench}", png(fig)))
    return out


def token_latency_vs_load(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """Served generation's server runs: the bound percentile's TTFT and TPOT against the
    scheduled rate, per variant, with each bound as a line."""
    groups: dict[str, list[CaseResult]] = defaultdict(list)
    for c in cases:
        if c.serving is not None and c.measured and c.serving.scenario == "server" \
                and c.serving.serves_tokens:
            groups[c.benchmark_key].append(c)
    out = []
    for bench, members in sorted(groups.items()):
        key = members[0].serving.bound_percentile
        bounds = members[0].serving.token_bounds_ms
        for index, figure_name in enumerate(("TTFT", "TPOT")):
            fig, ax = figure(f"{bench}: {key} {figure_name} against requests/s",
                             "scheduled requests/s", f"{key} {figure_name} (ms)")
            for c in members:
                points = sorted((r.scheduled_samples_per_s or r.target_qps or 0.0,
                                 ((r.ttft_ms if index == 0 else r.tpot_ms) or {}).get(key, 0.0))
                                for r in c.serving.runs if r.tpot_ms is not None)
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o", label=c.case_id.partition("[")[2].rstrip("]"))
            if bounds is not None:
                ax.axhline(bounds[index], linestyle="--", color="red")
            ax.legend(fontsize=5)
            out.append((f"Served generation: {figure_name} against load: {bench}", png(fig)))
    return out


PLOTS = (latency_cdf, qps_vs_latency, token_latency_vs_load)
