"""One self-contained HTML report of a run: the table and plots, images embedded.

Plots (matplotlib, Agg, PNG as data: URIs), each drawn only when the run has the data:
- throughput against batch size, a line per precision, per benchmark;
- accuracy parity against throughput per variant, with the Pareto front;
- peak memory and saved activations against accumulation steps;
- training loss curves;
- training runs (bench/reports/training_plots.py): eval curves per recipe, time to accuracy
  across seeds, confusion-matrix heatmaps, a hyperparameter search's best-so-far curve;
- served cases (bench/reports/serving.py): latency CDF per variant, latency against
  queries/s for server runs with the bound;
- text generation (bench/reports/generation.py): per-token latency against position, TTFT
  against input length.
"""

from __future__ import annotations

import html
from collections import defaultdict

from bench.reports import generation, serving, training_plots
from bench.reports.html_figures import figure, png
from bench.reports.parity import parity_by_case, variant_choices
from bench.reports.table import render_report
from bench.results.schema import CaseResult, RunRecord
from bench.units import DEFAULT_PARITY_TARGET


def _benchmark(case: CaseResult) -> str:
    return case.benchmark_key


def throughput_vs_batch(cases: list[CaseResult]) -> list[tuple[str, str]]:
    groups: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for c in cases:
        if c.status == "ok" and c.throughput and c.batch_size is not None:
            rest = ",".join(f"{k}={v}" for k, v in c.axes.items()
                            if k not in ("batch_size", "precision"))
            groups[(_benchmark(c), rest)][c.precision].append((c.batch_size,
                                                               c.throughput.value))
    out = []
    for (bench, rest), lines in groups.items():
        if max(len(points) for points in lines.values()) < 2:
            continue
        unit = next(c.throughput.unit for c in cases if c.throughput and _benchmark(c) == bench)
        fig, ax = figure(f"{bench} [{rest}]", "batch size", unit)
        for precision, points in sorted(lines.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=precision)
        ax.set_xscale("log", base=2)
        ax.legend(title="precision")
        out.append((f"Throughput against batch size: {bench} [{rest}]", png(fig)))
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both speed (x) and accuracy (y), by speed."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)


def _variant_label(case: CaseResult) -> str:
    """The variant axes that differ from the parity reference, plus the batch size."""
    parts = [f"{k}={v}" for k, v in variant_choices(case).items()]
    parts.append(f"bs{case.batch_size or '?'}")
    return " ".join(parts)


def accuracy_vs_throughput(cases: list[CaseResult]) -> list[tuple[str, str]]:
    parities = parity_by_case(cases)
    groups: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for c in cases:
        p = parities.get(c.case_id)
        if p is not None and c.throughput:
            groups[c.workload].append((c.throughput.value, p.ratio, _variant_label(c)))
    out = []
    for workload, points in groups.items():
        if len(points) < 3:
            continue
        fig, ax = figure(f"{workload}: accuracy parity against throughput",
                          "throughput (log)", "task metric / fp32 reference")
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, color="tab:blue")
        front = pareto_front([(p[0], p[1]) for p in points])
        ax.plot(*zip(*front, strict=True), color="tab:red", marker="o", label="Pareto front")
        for x, y, label in points:
            if (x, y) in front:
                ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.axhline(DEFAULT_PARITY_TARGET, color="gray", linestyle="--", linewidth=0.8,
                   label=f"{DEFAULT_PARITY_TARGET:.0%} of fp32 (default parity target)")
        ax.set_xscale("log")
        ax.legend(fontsize=7)
        out.append((f"Accuracy against throughput: {workload}", png(fig)))
    return out


def memory_vs_accumulation(cases: list[CaseResult]) -> list[tuple[str, str]]:
    groups: dict[str, list[tuple[int, float, float | None]]] = defaultdict(list)
    for c in cases:
        if c.status == "ok" and c.memory and "accum_steps" in c.axes:
            rest = ",".join(f"{k}={v}" for k, v in c.axes.items() if k != "accum_steps")
            split = c.details.get("memory_split") or {}
            peak = c.memory.peak()[0]
            groups[f"{_benchmark(c)} [{rest}]"].append(
                (int(c.axes["accum_steps"]), peak, split.get("activations_saved_mib")))
    out = []
    for name, points in groups.items():
        if len({p[0] for p in points}) < 2:
            continue
        points.sort()
        fig, ax = figure(name, "accumulation steps", "MiB")
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="peak memory")
        if all(p[2] is not None for p in points):
            ax.plot([p[0] for p in points], [p[2] for p in points], marker="s",
                    label="activations saved for backward")
        ax.legend(fontsize=7)
        out.append((f"Memory against accumulation steps: {name}", png(fig)))
    return out


def loss_curves(cases: list[CaseResult]) -> list[tuple[str, str]]:
    curves = []
    for c in cases:
        d = c.details
        if not c.measured:
            continue
        if "train_loss_curve" in d:
            every = d.get("loss_curve_every_steps", 1)
            curves.append((c.case_id, [i * every for i in range(len(d["train_loss_curve"]))],
                           d["train_loss_curve"], "optimizer step"))
        elif "train_loss_per_epoch" in d:
            curve = d["train_loss_per_epoch"]
            curves.append((c.case_id, list(range(1, len(curve) + 1)), curve, "epoch"))
    by_unit: dict[str, list] = defaultdict(list)
    seen: set[tuple[float, ...]] = set()
    for curve in curves:  # cases sharing one trained model share its curve: draw it once
        if tuple(curve[2]) not in seen:
            seen.add(tuple(curve[2]))
            by_unit[curve[3]].append(curve)
    out = []
    for unit, group in by_unit.items():
        fig, ax = figure(f"Training loss ({len(group)} cases)", unit, "loss")
        for case_id, xs, ys, _ in group[:12]:
            ax.plot(xs, ys, label=case_id[:60])
        ax.set_yscale("log")
        ax.legend(fontsize=5)
        out.append((f"Training loss per {unit}", png(fig)))
    return out


def throughput_vs_ranks(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """Cases trained across ranks: total throughput against world_size per benchmark, mode
    and per-rank batch, each beside its linear-scaling line (dashed, from its fewest ranks)."""
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for c in cases:
        if c.parallel is not None and c.measured and c.throughput is not None:
            key = (_benchmark(c), c.parallel.mode, str(c.batch_size or ""))
            series[key].append((c.parallel.world_size, c.throughput.value))
    lines = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
    if not lines:
        return []
    fig, ax = figure("Total throughput against ranks (dashed: linear scaling)", "ranks",
                     "samples/s over all ranks")
    for (bench, mode, batch), points in sorted(lines.items()):
        xs, ys = zip(*points, strict=True)
        line, = ax.plot(xs, ys, marker="o", label=f"{bench} {mode} batch/rank {batch}")
        ax.plot(xs, [ys[0] * x / xs[0] for x in xs], linestyle="--", color=line.get_color())
    ax.legend(fontsize=5)
    return [("Scaling across ranks", png(fig))]


PLOTS = (throughput_vs_batch, accuracy_vs_throughput, memory_vs_accumulation, loss_curves,
         throughput_vs_ranks, *training_plots.PLOTS, *serving.PLOTS, *generation.PLOTS)


def _plots(cases: list[CaseResult]) -> tuple[list[tuple[str, str]], list[str]]:
    """Every plot that can be drawn; free-form details a hand-edited file holds in the
    wrong shape (strings for numbers, NaN) drop that plot with a note, not the report."""
    figures, dropped = [], []
    for plot in PLOTS:
        try:
            figures += plot(cases)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            dropped.append(f"{plot.__name__}: {type(exc).__name__}: {str(exc)[:120]}")
    return figures, dropped


def render_html(record: RunRecord) -> str:
    figures, dropped = _plots(record.cases)
    table = render_report(record, "html")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>bench report: {html.escape(record.run.suite_name)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
        "font-size:11px}td,th{border:1px solid #ccc;padding:2px 4px}"
        "figure{display:inline-block;margin:0.5em}</style></head>",
        # The page says when every image has decoded, for the headless-browser check.
        "<body onload=\"document.body.dataset.imagesLoaded=Array.from(document.images)"
        ".filter(i=>i.complete&&i.naturalWidth>0).length\">",
        f"<h1>bench report: suite {html.escape(record.run.suite_name)}</h1>",
        f"<h2>Plots ({len(figures)})</h2>",
        *(f"<p>plot not drawn: {html.escape(text)}</p>" for text in dropped),
    ]
    for title, image in figures:
        parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{image}'>"
                     f"<figcaption>{html.escape(title)}</figcaption></figure>")
    parts += ["<h2>Cases</h2>", table, "</body></html>"]
    return "\n".join(parts)
