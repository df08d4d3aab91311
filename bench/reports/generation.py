"""Text-generation cases (the generate phase): their table in ``bench report``. Figures are
the records' (``CaseResult.generation``, bench.measurement.generation's definitions);
nothing is measured here."""

from __future__ import annotations

import statistics
from collections import defaultdict

from tabulate import tabulate

from bench.reports.html_figures import figure, png
from bench.reports.parity import parity_by_case
from bench.reports.serving import energy_text
from bench.reports.text import csv_text
from bench.results.schema import CaseResult, RunRecord
from bench.units import MIB

HEADERS = ("case", "batch", "in", "out", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms",
           "ITL p99 ms", "prefill tok/s", "decode tok/s", "KV cache MiB (computed/measured)",
           "weights MiB", "perplexity", "x ref ppl", "greedy agreement", "first divergence",
           "J/token")
NOTE = ("TTFT: from the generate call to its first new token; TPOT: (end-to-end - TTFT) / "
        "(output tokens - 1) per call; ITL: every gap between consecutive tokens; decode "
        "tok/s: batch x (output - 1) / decode time, median over calls; KV cache computed "
        "from the config for input + output - 1 tokens, measured from the last call's cache "
        "tensors; x ref ppl: perplexity over the fp32 eager reference's (1.01 = 1% worse); "
        "greedy agreement: share of new tokens equal to the fp32 eager model's, first "
        "divergence: mean position of the first different token")


def generated(record: RunRecord) -> list[CaseResult]:
    return [c for c in record.cases if c.generation is not None and c.measured]


def _ms(values: dict[str, float] | None, key: str) -> str:
    return "" if values is None or key not in values else f"{values[key] * 1e3:.4g}"


def _row(case: CaseResult, reference_ppl: float | None) -> list[str]:
    g = case.generation
    metrics = case.accuracy.metrics if case.accuracy else {}
    ppl = metrics.get("perplexity")
    measured = "" if g.kv_cache_measured_bytes is None else \
        f"{g.kv_cache_measured_bytes / MIB:.3g}"
    return [case.case_id, str(g.batch), str(g.input_tokens), str(g.output_tokens),
            _ms(g.ttft_s, "p50"), _ms(g.ttft_s, "p99"), _ms(g.tpot_s, "p50"),
            _ms(g.itl_s, "p99"), f"{g.prefill_tokens_per_s:.4g}",
            "" if g.decode_tokens_per_s is None else f"{g.decode_tokens_per_s:.4g}",
            f"{g.kv_cache_computed_bytes / MIB:.3g} / {measured}",
            f"{g.weights_bytes / MIB:.4g}", "" if ppl is None else f"{ppl:.4g}",
            "" if ppl is None or reference_ppl is None else f"{ppl / reference_ppl:.4f}",
            "" if "greedy_agreement" not in metrics else f"{metrics['greedy_agreement']:.3f}",
            "" if "greedy_first_divergence" not in metrics
            else f"{metrics['greedy_first_divergence']:.3g}",
            energy_text(case.energy)]


def render_generation(record: RunRecord, fmt: str = "github") -> str:
    """The generation table, or "" when no case generated text."""
    cases = generated(record)
    if not cases:
        return ""
    parities = parity_by_case(record.cases)
    rows = []
    for case in cases:
        parity = parities.get(case.case_id)
        rows.append(_row(case, None if parity is None else parity.reference))
    if fmt == "csv":
        return csv_text(list(HEADERS), rows)
    table = tabulate(rows, headers=HEADERS, tablefmt=fmt, disable_numparse=True)
    return table + ("" if fmt == "html" else f"\n{NOTE}")


def _label(case: CaseResult) -> str:
    return case.case_id.partition("[")[2].rstrip("]")


def token_latency_by_position(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """Per benchmark: the median over calls of each token's latency (the gap since the
    previous token; the first token's TTFT left out) against its position, a line per case,
    with the cold call dotted, so a cache's growth or a compile's first steps show."""
    drawn = [c for c in cases if c.generation is not None and c.measured
             and c.generation.output_tokens > 1 and c.generation.token_times_s]
    if not drawn:
        return []
    fig, ax = figure("Per-token latency against position (median over calls; dotted: "
                     "the cold call)", "new token position", "latency since previous (ms)")
    for case in drawn:
        g = case.generation
        gaps = [[b - a for a, b in zip(times, times[1:], strict=False)]
                for times in g.token_times_s]
        medians = [statistics.median(col) * 1e3 for col in zip(*gaps, strict=False)]
        line, = ax.plot(range(2, len(medians) + 2), medians, label=_label(case))
        cold = g.cold_token_times_s
        ax.plot(range(2, len(cold) + 1),
                [(b - a) * 1e3 for a, b in zip(cold, cold[1:], strict=False)],
                linestyle=":", color=line.get_color())
    ax.set_yscale("log")
    ax.legend(fontsize=5)
    return [("Generation: per-token latency against position", png(fig))]


def ttft_vs_input_length(cases: list[CaseResult]) -> list[tuple[str, str]]:
    """Median TTFT against input tokens, a line per case shape apart from the input length
    (batch, precision, the other axes)."""
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c in cases:
        if c.generation is not None and c.measured:
            rest = ",".join(f"{k}={v}" for k, v in sorted(c.axes.items())
                            if k not in ("input_tokens", "device"))
            lines[rest].append((c.generation.input_tokens, c.generation.ttft_s["p50"] * 1e3))
    if not any(len({x for x, _ in points}) > 1 for points in lines.values()):
        return []
    fig, ax = figure("Time to first token against input length (median over calls)",
                     "input tokens", "TTFT (ms)")
    for rest, points in sorted(lines.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=rest)
    ax.legend(fontsize=4)
    return [("Generation: TTFT against input length", png(fig))]


PLOTS = (token_latency_by_position, ttft_vs_input_length)
