"""Compare two run files case by case: speed with a CI and a significance test, memory,
accuracy and status. Nothing is measured here; everything comes from the files' raw trials.

Speed is baseline median step time / current median step time (> 1: current is faster).
Two files of one interleaved A/B session (``bench ab``) are compared round by round: each
round ran both sides back to back, so the test is on the rounds' paired ratios and machine
drift between rounds cancels. Otherwise it is estimated from the per-trial mean step times
both files keep (trials of one run share its drift, so that test is only as good as the
machine is steady between the two runs). Memory is the peak (CUDA
allocated where present, else anonymous RSS, else RSS), current / baseline. Accuracy is
the task metric, oriented so a ratio below 1 is worse (current / baseline, or the inverse for
lower-is-better metrics such as loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.measurement.stats import RatioEstimate, paired_ratio, ratio_of_medians
from bench.results.schema import PROCESS_MEDIANS_KEY, CaseResult, RunRecord

# What must match for two runs' figures to be comparable, read from their fingerprints.
FINGERPRINT_KEYS = (("cpu", "model"), ("cpu", "logical_cores"), ("packages", "torch"),
                    ("threads", "torch_intraop"))


@dataclass(frozen=True)
class Speed:
    """Speed-up of current over baseline, from the step-time ratio (inverted)."""

    time: RatioEstimate

    @property
    def ratio(self) -> float:
        return 1.0 / self.time.ratio

    @property
    def ci(self) -> tuple[float, float]:
        low, high = self.time.ci_low, self.time.ci_high
        return (1.0 / high if high > 0 else 0.0, 1.0 / low if low > 0 else math.inf)


@dataclass(frozen=True)
class CaseComparison:
    case_id: str
    baseline: CaseResult | None
    current: CaseResult | None
    speed: Speed | None = None
    memory_ratio: float | None = None
    memory_kind: str | None = None
    accuracy_metric: str | None = None
    accuracy_ratio: float | None = None
    accuracy_target: float | None = None

    @property
    def status_change(self) -> str:
        base = self.baseline.status if self.baseline else "absent"
        cur = self.current.status if self.current else "absent"
        return base if base == cur else f"{base} -> {cur}"


def _trial_times(case: CaseResult) -> list[float]:
    return list(case.timing.trial_means_s) if case.timing else []


def _memory_ratio(base: CaseResult, cur: CaseResult) -> tuple[float | None, str | None]:
    """CUDA peak allocated where both have it; else the peak anonymous RSS (stable across
    venvs and page-cache states); else the peak RSS."""
    a, b = base.memory, cur.memory
    if a is None or b is None:
        return None, None
    for attr, kind in (("cuda_peak_allocated_mib", "CUDA peak allocated"),
                       ("peak_anon_rss_mib", "peak anonymous RSS"),
                       ("peak_rss_mib", "peak RSS")):
        then, now = getattr(a, attr), getattr(b, attr)
        if then and now:
            return now / then, kind
    return None, None


def _accuracy(base: CaseResult, cur: CaseResult) -> tuple[str | None, float | None, float | None]:
    a, b = cur.accuracy, base.accuracy
    if a is None or b is None or a.task_metric is None:
        return None, None, None
    metric = a.task_metric
    now, then = a.metrics.get(metric), b.metrics.get(metric)
    if now is None or then is None:
        return metric, None, a.parity_target
    if a.higher_is_better:
        ratio = now / then if then else math.inf
    else:
        ratio = then / now if now else math.inf
    return metric, ratio, a.parity_target


def paired_session(baseline: RunRecord, current: RunRecord) -> str | None:
    """The A/B session id when the two files are the two sides of one interleaved run."""
    a, b = baseline.run.pairing, current.run.pairing
    if a.get("session") and a.get("session") == b.get("session") and \
            a.get("side") != b.get("side"):
        return a["session"]
    return None


def _speed(base: CaseResult, cur: CaseResult, paired: bool) -> Speed | None:
    if paired:
        base_rounds = base.details.get(PROCESS_MEDIANS_KEY) or []
        cur_rounds = cur.details.get(PROCESS_MEDIANS_KEY) or []
        if base_rounds and len(base_rounds) == len(cur_rounds):
            return Speed(paired_ratio(base_rounds, cur_rounds))
    base_times, cur_times = _trial_times(base), _trial_times(cur)
    if base_times and cur_times:
        return Speed(ratio_of_medians(base_times, cur_times))
    return None


def compare_case(base: CaseResult | None, cur: CaseResult | None,
                 paired: bool = False) -> CaseComparison:
    case_id = (cur or base).case_id
    if base is None or cur is None or base.status != "ok" or cur.status != "ok":
        return CaseComparison(case_id, base, cur)
    speed = _speed(base, cur, paired)
    memory, kind = _memory_ratio(base, cur)
    metric, accuracy, target = _accuracy(base, cur)
    return CaseComparison(case_id, base, cur, speed, memory, kind, metric, accuracy, target)


def compare_runs(baseline: RunRecord, current: RunRecord) -> list[CaseComparison]:
    """Every case of either run, in the current run's order, then baseline-only ones."""
    base_cases = {c.case_id: c for c in baseline.cases}
    cur_ids = [c.case_id for c in current.cases]
    paired = paired_session(baseline, current) is not None
    out = [compare_case(base_cases.get(c.case_id), c, paired) for c in current.cases]
    out += [compare_case(c, None) for c in baseline.cases if c.case_id not in cur_ids]
    return out


def fingerprint_differences(baseline: RunRecord, current: RunRecord) -> list[str]:
    diffs = []
    for path in FINGERPRINT_KEYS:
        values = []
        for record in (baseline, current):
            node = record.fingerprint
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            values.append(node)
        if values[0] != values[1]:
            diffs.append(f"{'.'.join(path)}: {values[0]!r} vs {values[1]!r}")
    base_gpus = [g.get("name") for g in baseline.fingerprint.get("gpus") or []]
    cur_gpus = [g.get("name") for g in current.fingerprint.get("gpus") or []]
    if base_gpus != cur_gpus:
        diffs.append(f"gpus: {base_gpus} vs {cur_gpus}")
    return diffs


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def render_comparison(rows: list[CaseComparison], fmt: str = "github") -> str:
    from tabulate import tabulate

    table = []
    for c in rows:
        speed = ci = p = ""
        if c.speed is not None:
            low, high = c.speed.ci
            speed, ci = f"{c.speed.ratio:.3f}", f"{low:.3f}–{high:.3f}"
            p = f"{c.speed.time.p_value:.3g}"
            if c.speed.time.pairs:
                p += f" (t, {c.speed.time.pairs} rounds)"
        table.append([c.case_id, c.status_change, speed, ci, p,
                      "" if c.memory_ratio is None else f"{c.memory_ratio:.3f}",
                      "" if c.accuracy_ratio is None else
                      f"{c.accuracy_ratio:.4f} ({c.accuracy_metric})"])
    gm = geometric_mean([c.speed.ratio for c in rows if c.speed is not None])
    if gm is not None:
        table.append(["geometric mean", "", f"{gm:.3f}", "", "", "", ""])
    return tabulate(table, headers=["case", "status", "speed (base/current time)", "95% CI",
                                    "p (Mann-Whitney; t when paired)", "memory ratio",
                                    "accuracy ratio"],
                    tablefmt=fmt, disable_numparse=True)
