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
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from bench.measurement.stats import (
    RatioEstimate,
    SeedComparison,
    compare_seeds,
    paired_ratio,
    ratio_of_medians,
)
from bench.results.schema import (
    CaseResult,
    MemoryResult,
    RunRecord,
)

# What must match for two runs' figures to be comparable, read from their fingerprints.
# The ISA level torch dispatches to and the CPU family/model numbers tell apart machines
# whose model string is generic ("AMD EPYC" is AVX2-only on one kind, AVX-512 with bf16
# on another: 10x apart in bf16).
FINGERPRINT_KEYS = (("cpu", "model"), ("cpu", "family"), ("cpu", "model_number"),
                    ("cpu", "logical_cores"), ("torch_config", "cpu_capability"),
                    ("packages", "torch"), ("threads", "torch_intraop"))
# Recorded since schema 2: compared where both files have them, so a baseline written
# before is not refused on the same machine (its ISA level, recorded before, still is).
RECENT_FINGERPRINT_KEYS = frozenset({("cpu", "family"), ("cpu", "model_number")})

@dataclass(frozen=True)
class Problem:
    """Why a figure of one check (speed, memory, accuracy; inconclusive for the whole case)
    cannot be compared."""

    check: str
    text: str

    def __str__(self) -> str:
        return f"{self.check}: {self.text}"


def injected_slowdown(case: CaseResult | None) -> float | None:
    """The test-only slowdown a worker injected into this case (BENCH_TEST_SLOWDOWN)."""
    if case is None:
        return None
    return case.injected_slowdown or None


def run_injected_slowdowns(record: RunRecord) -> dict[str, float]:
    return {c.case_id: v for c in record.cases if (v := injected_slowdown(c)) is not None}


@dataclass(frozen=True)
class Speed:
    """Speed-up of current over baseline, from the step-time ratio (inverted)."""

    time: RatioEstimate
    # Paired A/B rounds: each round's log(current / baseline) step time, in round order.
    log_ratios: tuple[float, ...] | None = None

    @property
    def ratio(self) -> float:
        return 1.0 / self.time.ratio

    @property
    def ci(self) -> tuple[float, float]:
        low, high = self.time.ci_low, self.time.ci_high
        return (1.0 / high if high > 0 else 0.0, 1.0 / low if low > 0 else math.inf)


@dataclass(frozen=True)
class ServingComparison:
    """A LoadGen scenario case against the baseline's: the bound percentile's latency
    (current / baseline: above 1 is slower) and the rate (the server capacity where the
    baseline searched one, else LoadGen's samples/s; current / baseline: below 1 is
    worse). One LoadGen run per side has no confidence interval: the policy's thresholds
    are the guard against noise."""

    scenario: str
    percentile: str  # the latency compared: p99 (or the server bound's percentile)
    latency_ratio: float
    rate_kind: str  # capacity | samples/s
    rate_ratio: float
    bound_lost: bool  # the baseline's headline run met its bound, the current one's not
    # Served generation (both sides served tokens): LoadGen's TTFT and TPOT at the same
    # percentile, current / baseline.
    ttft_ratio: float | None = None
    tpot_ratio: float | None = None

    @property
    def token_ratios(self) -> dict[str, float]:
        return {name: ratio for name, ratio in (("TTFT", self.ttft_ratio),
                                                ("TPOT", self.tpot_ratio)) if ratio is not None}


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
    # Why a figure the baseline has cannot be compared (missing, non-finite, unpaired):
    # the gate counts each as a failure, never as a pass. (A side timed under contention
    # is the gate's to weigh: bench.reports.gate.contention.)
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    # Instructions per step, current / baseline, where both sides were counted (callgrind).
    instructions_ratio: float | None = None
    # Time to target over seeds (time-to-accuracy cases with a target on both sides).
    time_to_accuracy: SeedComparison | None = None
    serving: ServingComparison | None = None  # LoadGen scenario cases
    # Text-generation cases: time to first token over calls, current / baseline time.
    ttft: RatioEstimate | None = None

    @property
    def status_change(self) -> str:
        base = self.baseline.status if self.baseline else "absent"
        cur = self.current.status if self.current else "absent"
        return base if base == cur else f"{base} -> {cur}"


def _finite_positive(values: list[float]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values)


def _trial_times(case: CaseResult) -> list[float]:
    return list(case.timing.trial_means_s) if case.timing else []


def _memory_ratio(base: CaseResult, cur: CaseResult,
                  problems: list[Problem]) -> tuple[float | None, str | None]:
    """The first figure of MemoryResult.PEAK_ORDER both records have. A baseline peak the
    current run lacks is a problem, not a pass."""
    a, b = base.memory, cur.memory
    base_kinds = [kind for attr, kind in MemoryResult.PEAK_ORDER
                  if a is not None and getattr(a, attr)]
    if not base_kinds:
        return None, None
    if b is None:
        problems.append(Problem("memory", "the current run has no memory figures"))
        return None, None
    for attr, kind in MemoryResult.PEAK_ORDER:
        then, now = getattr(a, attr), getattr(b, attr)
        if then and now:
            ratio = now / then
            if not (math.isfinite(ratio) and ratio > 0):
                problems.append(Problem("memory",
                                        f"{kind} {then!r} -> {now!r} is not comparable"))
                return None, None
            return ratio, kind
    problems.append(Problem("memory", f"the current run has no {base_kinds[0]} figure"))
    return None, None


def metric_ratio(value: float, reference: float, higher_is_better: bool | None) -> float:
    """A task metric against its reference, oriented so that below 1 is worse; NaN when
    either is not a finite number (NaN never passes a bound)."""
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (value, reference)):
        return math.nan
    if higher_is_better:
        return value / reference if reference else (1.0 if value == 0 else math.inf)
    return reference / value if value else (1.0 if reference == 0 else math.inf)


def _accuracy(base: CaseResult, cur: CaseResult,
              problems: list[Problem]) -> tuple[str | None, float | None, float | None]:
    a, b = cur.accuracy, base.accuracy
    if b is None or b.task_metric is None or b.metrics.get(b.task_metric) is None:
        return None, None, None
    metric = b.task_metric
    then = b.metrics[metric]
    now = a.metrics.get(metric) if a is not None else None
    target = (a or b).parity_target
    if now is None:
        problems.append(Problem("accuracy", f"the current run has no {metric}"))
        return metric, None, target
    ratio = metric_ratio(now, then, b.higher_is_better)
    if math.isnan(ratio):  # a non-finite metric on either side
        problems.append(Problem("accuracy",
                                f"{metric} {then!r} -> {now!r} is not a finite number"))
        return metric, None, target
    return metric, ratio, target


def paired_session(baseline: RunRecord, current: RunRecord) -> str | None:
    """The A/B session id when the two files are the two sides of one interleaved run."""
    a, b = baseline.run.pairing, current.run.pairing
    if a.get("session") and a.get("session") == b.get("session") and \
            a.get("side") != b.get("side"):
        return a["session"]
    return None


def _speed(base: CaseResult, cur: CaseResult, paired: bool,
           problems: list[Problem]) -> Speed | None:
    if base.timing is None:
        return None
    if cur.timing is None:
        problems.append(Problem("speed", "the current run has no timing"))
        return None
    if paired:
        base_rounds = base.rounds.medians_s if base.rounds is not None else []
        cur_rounds = cur.rounds.medians_s if cur.rounds is not None else []
        if not base_rounds or len(base_rounds) != len(cur_rounds):
            problems.append(Problem("speed", f"an A/B session must pair its rounds, got "
                                    f"{len(base_rounds)} baseline and {len(cur_rounds)} "
                                    "current"))
            return None
        if not _finite_positive(base_rounds + cur_rounds):
            problems.append(Problem("speed",
                                    "a round's median is not a finite positive number"))
            return None
        logs = tuple(math.log(c / b) for b, c in zip(base_rounds, cur_rounds, strict=True))
        return _finite_speed(Speed(paired_ratio(base_rounds, cur_rounds), logs), problems)
    base_times, cur_times = _trial_times(base), _trial_times(cur)
    if not base_times or not cur_times:
        problems.append(Problem("speed", f"no trials ({len(base_times)} baseline, "
                                f"{len(cur_times)} current)"))
        return None
    if not _finite_positive(base_times + cur_times):
        problems.append(Problem("speed", "a trial mean is not a finite positive number"))
        return None
    return _finite_speed(Speed(ratio_of_medians(base_times, cur_times)), problems)


def _finite_speed(speed: Speed, problems: list[Problem]) -> Speed | None:
    """Finite positive inputs can still overflow (1e308 against 0.1 s): not comparable."""
    if math.isfinite(speed.ratio) and speed.ratio > 0:
        return speed
    problems.append(Problem("speed", f"the speed ratio {speed.ratio!r} is not a finite number"))
    return None


def compare_case(base: CaseResult | None, cur: CaseResult | None,
                 paired: bool = False) -> CaseComparison:
    case_id = (cur or base).case_id
    if base is None or cur is None or not base.measured or not cur.measured:
        return CaseComparison(case_id, base, cur)
    problems: list[Problem] = []
    speed = _speed(base, cur, paired, problems)
    memory, kind = _memory_ratio(base, cur, problems)
    metric, accuracy, target = _accuracy(base, cur, problems)
    tta = _time_to_accuracy(base, cur, problems)
    served = _serving(base, cur, problems)
    ttft = _ttft(base, cur, problems)
    return CaseComparison(case_id, base, cur, speed, memory, kind, metric, accuracy, target,
                          tuple(problems), _instructions_ratio(base, cur), tta, served, ttft)


def call_ttfts(case: CaseResult) -> list[float]:
    """Each timed generate call's time to first token (a generation case's raw token
    times), or [] for any other case."""
    g = case.generation
    return [] if g is None else [times[0] for times in g.token_times_s if times]


def _ttft(base: CaseResult, cur: CaseResult, problems: list[Problem]) -> RatioEstimate | None:
    """TTFT over calls against the baseline's, where the baseline generated."""
    then, now = call_ttfts(base), call_ttfts(cur)
    if not then:
        return None
    if not now:
        problems.append(Problem("ttft", "the baseline's generate calls were timed, the "
                                        "current run's not"))
        return None
    if not _finite_positive(then + now):
        problems.append(Problem("ttft", "a time to first token is not a finite positive "
                                        "number"))
        return None
    return ratio_of_medians(then, now)


def _serving(base: CaseResult, cur: CaseResult,
             problems: list[Problem]) -> ServingComparison | None:
    a, b = base.serving, cur.serving
    if a is None:
        return None
    if b is None or b.scenario != a.scenario:
        problems.append(Problem("serving", f"the baseline served {a.scenario}, the current "
                                "run " + ("did not serve" if b is None else b.scenario)))
        return None
    key = a.bound_percentile if a.scenario == "server" else "p99"
    then, now = a.headline_run, b.headline_run
    if key not in then.latency_ms or key not in now.latency_ms:
        problems.append(Problem("serving", f"no {key} latency on both sides"))
        return None
    kind = "capacity" if a.capacity_qps is not None else "samples/s"
    if kind == "capacity":
        # No probe met the bound now: no capacity at all, the worst regression there is.
        rate_then, rate_now = a.capacity_qps, b.capacity_qps or 0.0
    else:
        rate_then, rate_now = then.samples_per_s, now.samples_per_s
    figures = [then.latency_ms[key], now.latency_ms[key], rate_then]
    if not _finite_positive(figures) or not math.isfinite(rate_now) or rate_now < 0:
        problems.append(Problem("serving", "a latency or rate is not a finite positive "
                                           "number"))
        return None
    tokens = {}
    for name in ("ttft", "tpot"):
        before, after = getattr(then, f"{name}_ms"), getattr(now, f"{name}_ms")
        if before is not None and after is not None and key in before and key in after \
                and _finite_positive([before[key], after[key]]):
            tokens[f"{name}_ratio"] = after[key] / before[key]
    return ServingComparison(a.scenario, key, now.latency_ms[key] / then.latency_ms[key], kind,
                             rate_now / rate_then, then.meets_bound and not now.meets_bound,
                             **tokens)


def _time_to_accuracy(base: CaseResult, cur: CaseResult,
                      problems: list[Problem]) -> SeedComparison | None:
    a, b = base.time_to_accuracy, cur.time_to_accuracy
    if a is None or not a.settings.get("target_metric"):
        return None
    if b is None or b.target != a.target:
        problems.append(Problem("time_to_accuracy", f"the baseline ran to {a.target}, the "
                                "current run " + ("did not run to a target" if b is None
                                                  else f"to {b.target}")))
        return None
    return compare_seeds(a.times_to_target(), b.times_to_target(), a.score_s, b.score_s)


def instructions_per_step(case: CaseResult | None) -> float | None:
    value = None if case is None or case.instructions is None else case.instructions.per_step
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _instructions_ratio(base: CaseResult, cur: CaseResult) -> float | None:
    then, now = instructions_per_step(base), instructions_per_step(cur)
    return None if then is None or now is None else now / then


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
        if path in RECENT_FINGERPRINT_KEYS and None in values:
            continue
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


def comparison_json(rows: list[CaseComparison]) -> list[dict[str, Any]]:
    """``bench compare --json``: each case's figures, current against baseline."""
    def finite(value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) else None

    return [{
        "case_id": c.case_id, "status": c.status_change,
        "speed": None if c.speed is None else {
            "ratio": c.speed.ratio, "ci95": [finite(v) for v in c.speed.ci],
            "p_value": finite(c.speed.time.p_value)},
        "memory_ratio": c.memory_ratio, "memory_kind": c.memory_kind,
        "accuracy": None if c.accuracy_ratio is None else {
            "metric": c.accuracy_metric, "ratio": c.accuracy_ratio,
            "target": c.accuracy_target},
        "instructions_ratio": c.instructions_ratio,
        "problems": [str(p) for p in c.problems],
    } for c in rows]


def render_comparison(rows: list[CaseComparison], fmt: str = "github") -> str:
    table = []
    for c in rows:
        notes = [str(p) for p in c.problems]
        for side, case in (("baseline", c.baseline), ("current", c.current)):
            if (fraction := injected_slowdown(case)) is not None:
                notes.append(f"{side}: injected slowdown +{fraction:.0%} (BENCH_TEST_SLOWDOWN)")
        speed = ci = p = ""
        if c.speed is not None:
            low, high = c.speed.ci
            speed, ci = f"{c.speed.ratio:.3f}", f"{low:.3f}–{high:.3f}"
            p = f"{c.speed.time.p_value:.3g}"
            if c.speed.time.pairs:
                p += f" (t, {c.speed.time.pairs} rounds)"
        if c.instructions_ratio is not None:
            notes.append(f"instructions per step x{c.instructions_ratio:.4f} (callgrind)")
        if (tta := c.time_to_accuracy) is not None:
            notes.append("time to target " + (f"x{tta.ratio:.3f}" if tta.ratio else "n/a")
                          + f" (Mann-Whitney p={tta.p_value:.2g} over {tta.seeds_baseline}"
                          f"+{tta.seeds_current} seeds"
                          + ("" if tta.decidable(0.05) else "; too few seeds to decide at "
                             "p < 0.05") + ")")
        if (ttft := c.ttft) is not None:
            notes.append(f"TTFT x{ttft.ratio:.3f} (time, 95% CI {ttft.ci_low:.3f}-"
                         f"{ttft.ci_high:.3f}, Mann-Whitney p={ttft.p_value:.2g} over "
                         f"{ttft.n_baseline}+{ttft.n_current} calls)")
        if (sv := c.serving) is not None:
            notes.append(f"{sv.scenario}: {sv.percentile} latency x{sv.latency_ratio:.3f}, "
                         f"{sv.rate_kind} x{sv.rate_ratio:.3f} (LoadGen, one run a side)"
                         + ("; bound met before, missed now" if sv.bound_lost else ""))
        table.append([c.case_id, c.status_change, speed, ci, p,
                      "" if c.memory_ratio is None else f"{c.memory_ratio:.3f}",
                      "" if c.accuracy_ratio is None else
                      f"{c.accuracy_ratio:.4f} ({c.accuracy_metric})", "; ".join(notes)])
    gm = geometric_mean([c.speed.ratio for c in rows if c.speed is not None])
    if gm is not None:
        table.append(["geometric mean", "", f"{gm:.3f}", "", "", "", "", ""])
    return tabulate(table, headers=["case", "status", "speed (base/current time)", "95% CI",
                                    "p (Mann-Whitney; t when paired)", "memory ratio",
                                    "accuracy ratio", "notes"],
                    tablefmt=fmt, disable_numparse=True)
