"""The hardware comparison table: one row per case, one column per machine.

Rows are cases named without the axes that say where they ran (device, threads), so the
same benchmark on a CPU and on a GPU lands in one row. Columns are machines named from the
run files' fingerprints. Each cell holds the metric and, off the reference machine, its
speed-up (or ratio) against the reference; the last row is the geometric mean of those
ratios over the rows both machines ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tabulate import tabulate

from bench.measurement.fingerprint import machine_name
from bench.reports.compare import geometric_mean
from bench.reports.text import csv_text
from bench.results.schema import STATUS_CONTENDED, CaseResult, RunRecord

PLACEMENT_AXES = ("device", "threads")
# The same choices as bench report's (bench.reports.table.FORMATS).
FORMATS = ("github", "plain", "latex", "csv", "html")


@dataclass(frozen=True)
class Metric:
    name: str
    header: str
    higher_is_better: bool

    def value(self, case: CaseResult) -> float | None:
        if case.status != "ok":
            return None
        if self.name == "throughput":
            return case.throughput.value if case.throughput else None
        if self.name == "median_ms":
            return case.timing.median_s * 1e3 if case.timing else None
        if self.name == "peak_memory_mib":
            mem = case.memory
            return None if mem is None else mem.peak()[0]
        if self.name == "mfu":
            return case.compute.mfu_measured if case.compute else None
        raise ValueError(self.name)


METRICS = {m.name: m for m in (
    Metric("throughput", "throughput", True),
    Metric("median_ms", "median step ms", False),
    Metric("peak_memory_mib", "peak memory MiB (CUDA allocated, else anonymous RSS, else RSS)",
           False),
    Metric("mfu", "MFU (measured peak)", True),
)}


def row_key(case: CaseResult) -> str:
    axes = ",".join(f"{k}={v}" for k, v in case.axes.items() if k not in PLACEMENT_AXES)
    return f"{case.benchmark_key}[{axes}]"


def machine_names(runs: list[RunRecord]) -> list[str]:
    base = [machine_name(r.fingerprint) for r in runs]
    names = [f"{name}, {r.fingerprint.get('threads', {}).get('torch_intraop')} torch threads"
             if base.count(name) > 1 else name for name, r in zip(base, runs, strict=True)]
    return [f"{name} (run {r.run.run_id})" if names.count(name) > 1 else name
            for name, r in zip(names, runs, strict=True)]


def build_table(runs: list[RunRecord], metric: str = "throughput",
                reference: str | None = None) -> tuple[list[str], list[list[str]]]:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    m = METRICS[metric]
    names = machine_names(runs)
    ref_index = 0
    if reference is not None:
        matches = [i for i, n in enumerate(names) if reference.lower() in n.lower()]
        if not matches:
            raise KeyError(reference)
        ref_index = matches[0]
    columns: list[dict[str, float]] = []
    rows: list[str] = []
    contended: list[set[str]] = []
    for run in runs:
        values: dict[str, float] = {}
        contended.append({row_key(c) for c in run.cases if c.status == STATUS_CONTENDED})
        for case in run.cases:
            key, value = row_key(case), m.value(case)
            if value is not None and math.isfinite(value) and value > 0 and key not in values:
                values[key] = value
            if key not in rows:
                rows.append(key)
        columns.append(values)
    rows = [r for r in rows if any(r in col or r in bad
                                   for col, bad in zip(columns, contended, strict=True))]
    ratios: list[list[float]] = [[] for _ in runs]
    table = []
    for key in rows:
        ref = columns[ref_index].get(key)
        cells = []
        for i, col in enumerate(columns):
            value = col.get(key)
            if value is None:
                # Timed beside other processes: shown, never compared.
                cells.append("contended (not compared)" if key in contended[i] else "")
                continue
            text = f"{value:.4g}"
            if i != ref_index and ref:
                ratio = value / ref if m.higher_is_better else ref / value
                ratios[i].append(ratio)
                text += f" (x{ratio:.2f})"
            cells.append(text)
        table.append([key, *cells])
    gm_cells = []
    for i in range(len(runs)):
        gm = geometric_mean(ratios[i]) if i != ref_index else None
        gm_cells.append("reference" if i == ref_index else
                        "" if gm is None else f"x{gm:.2f} over {len(ratios[i])} cases")
    table.append(["geometric mean (vs reference)", *gm_cells])
    headers = [f"case ({m.header}; x = vs reference, > 1 better)", *names]
    return headers, table


def render_table(runs: list[RunRecord], metric: str = "throughput",
                 reference: str | None = None, fmt: str = "github") -> str:
    headers, rows = build_table(runs, metric, reference)
    if fmt == "csv":
        return csv_text(headers, rows)
    return tabulate(rows, headers=headers, tablefmt=fmt,
                    disable_numparse=True) + "\n"

