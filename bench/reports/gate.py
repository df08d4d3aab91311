"""The CI regression gate: a policy applied to a comparison, and its markdown summary.

A case regresses when (each check a small strategy over a ``CaseComparison``):
- status: it was ok in the baseline and is not now (or has gone missing);
- speed: slower by more than ``speed.max_drop`` AND significant (p < alpha and the
  ratio's 95% CI excludes 1), so noise alone does not fail a build. The test is a
  Mann-Whitney U on trials for two separate runs, a paired t-test on the rounds of an
  interleaved A/B session (``bench ab``), where machine drift cancels;
- memory: peak grew by more than ``memory.max_growth``;
- accuracy: task metric below ``accuracy.min_ratio`` of the baseline (default: the
  suite's parity target for the case, 0.99);
- serving: a LoadGen scenario's latency percentile (served generation: also its TTFT or
  TPOT at that percentile) grew by more than ``serving.max_latency_growth``, its capacity
  (or samples/s) fell by more than ``serving.max_rate_drop``, or a server latency bound met
  before is missed now;
- ttft: a text-generation case's time to first token (over its calls) grew by more than
  ``ttft.max_growth`` AND significant (Mann-Whitney at ``speed.alpha``); its time per
  output token is the case's step time, judged by the speed check;
- classes / class parity: one class's recall fell by more than ``accuracy.max_class_drop``
  (absolute) against the baseline's same case, or a variant's against its reference in
  the current run (error analysis), even where the overall metric holds.
Changes as large the other way are listed as improvements, so baselines get refreshed.

"Exit 0" means "no regression", never "could not tell": a case the gate cannot judge is a
failure with its reason (listed under "Cannot judge"): too few trials for the test to
reach alpha (Mann-Whitney needs ``min_trials_for_verdict(alpha)`` trials per side, 4 at
0.05), a figure the baseline has and the current run lacks or holds as NaN, unpaired A/B
rounds, a verdict that contention could have faked (``contention``), or a baseline with no
measured case at all.

Contention (other processes or the hypervisor taking the CPU: status ``contended``) only
ever slows the side it hits. So the timed checks (speed, time to accuracy, serving, ttft) of a
contended case are judged in the one direction it cannot fake: a current run that passes
while slowed passes, and a current run that falls behind a slowed baseline regresses. A
slowdown of a contended current run, and a pass or gain against a contended baseline,
cannot be told from the contention: they are inconclusive (failures). Marking a record
contended therefore never turns a failure into a pass.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

from bench import exit_codes
from bench.errors import BenchInputError
from bench.files import parse_toml, read_bounded_text
from bench.measurement.host_probe import describe_ratio, host_ratio
from bench.measurement.sequential import NO_REGRESSION, REGRESSION, SequentialTest
from bench.measurement.stats import min_trials_for_verdict
from bench.reports.compare import (
    CaseComparison,
    Problem,
    instructions_per_step,
    paired_session,
    run_injected_slowdowns,
)
from bench.reports.parity import class_parity_failures, worst_class
from bench.reports.slo import slo_failures
from bench.results.schema import STATUS_CONTENDED, HostProbe, RunRecord
from bench.units import DEFAULT_PARITY_TARGET, MIB


@dataclass(frozen=True)
class Policy:
    speed_max_drop: float = 0.05
    speed_alpha: float = 0.05
    memory_max_growth: float = 0.10
    accuracy_min_ratio: float | None = None  # None: the case's parity target
    # Per-class recall (classification cases): a drop beyond this, absolute, against the
    # baseline's same case or against the variant's reference in the same run, regresses.
    accuracy_max_class_drop: float = 0.10
    gate_speed: bool = True
    gate_memory: bool = True
    gate_accuracy: bool = True
    # A case whose speed CI neither shows a regression nor excludes one beyond max_drop (an
    # underpowered comparison: the warning says what slowdown it could have detected):
    # "warn" (listed under Warnings, the gate passes: a file gated against itself passes)
    # or "fail" (no verdict, exit 3: the spread left it undecided). A case that cannot be
    # judged at all (too few trials, a missing or non-finite figure) fails either way.
    speed_inconclusive: str = "warn"
    # Paired A/B rounds are judged by the sequential test (bench.measurement.sequential)
    # with these error rates per case; false: by significance and magnitude as separate
    # runs are.
    speed_sequential: bool = True
    speed_false_alarm: float = 0.002
    speed_miss: float = 0.02
    # Time to target over seeds (time-to-accuracy cases): slower by more than max_growth
    # and significant (Mann-Whitney over seeds at speed_alpha) regresses.
    tta_max_growth: float = 0.10
    gate_tta: bool = True
    # Instructions per step (callgrind counts, bench ab --instructions): reported always,
    # a failure beyond max_growth only with gate = true.
    instructions_max_growth: float = 0.01
    gate_instructions: bool = False
    # LoadGen scenario cases: the bound percentile's latency grew, or the capacity (server
    # search; else samples/s) fell, beyond these; a server bound met before and not now.
    serving_max_latency_growth: float = 0.10
    serving_max_rate_drop: float = 0.10
    gate_serving: bool = True
    # Text-generation cases: time to first token over calls grew beyond this, significant
    # at speed_alpha (TPOT is the case's step time: the speed check judges it).
    ttft_max_growth: float = 0.10
    gate_ttft: bool = True
    # [[case]] entries: (glob on case ids, the settings it changes), applied in file order.
    overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def sequential_test(self) -> SequentialTest | None:
        """The sequential test paired rounds are judged (and bench ab stopped) by; None
        under ``sequential = false`` or a max_drop of 0 (no drop to test against)."""
        if not self.speed_sequential or self.speed_max_drop <= 0:
            return None
        return SequentialTest(self.speed_max_drop, self.speed_false_alarm, self.speed_miss)

    def for_case(self, case_id: str) -> Policy:
        """This policy with every [[case]] entry whose ``match`` glob fits ``case_id``."""
        values: dict[str, Any] = {}
        for pattern, settings in self.overrides:
            if fnmatch.fnmatchcase(case_id, pattern):
                values.update(settings)
        return replace(self, **values, overrides=()) if values else self


# Each number's valid range: (low, high, low inclusive, high inclusive).
_POLICY_RANGES = {
    "speed_max_drop": (0.0, 1.0, True, False),
    "speed_alpha": (0.0, 0.5, False, True),
    "memory_max_growth": (0.0, math.inf, True, False),
    "accuracy_min_ratio": (0.0, 1.0, False, True),
    "accuracy_max_class_drop": (0.0, 1.0, True, True),
    "speed_false_alarm": (0.0, 0.5, False, False),
    "instructions_max_growth": (0.0, math.inf, True, False),
    "speed_miss": (0.0, 0.5, False, False),
    "tta_max_growth": (0.0, math.inf, True, False),
    "serving_max_latency_growth": (0.0, math.inf, True, False),
    "serving_max_rate_drop": (0.0, 1.0, True, False),
    "ttft_max_growth": (0.0, math.inf, True, False),
}

_POLICY_TABLES = {
    "speed": {"max_drop": "speed_max_drop", "alpha": "speed_alpha", "gate": "gate_speed",
              "inconclusive": "speed_inconclusive", "sequential": "speed_sequential",
              "false_alarm": "speed_false_alarm", "miss": "speed_miss"},
    "memory": {"max_growth": "memory_max_growth", "gate": "gate_memory"},
    "accuracy": {"min_ratio": "accuracy_min_ratio", "gate": "gate_accuracy",
                 "max_class_drop": "accuracy_max_class_drop"},
    "instructions": {"max_growth": "instructions_max_growth", "gate": "gate_instructions"},
    "time_to_accuracy": {"max_growth": "tta_max_growth", "gate": "gate_tta"},
    "serving": {"max_latency_growth": "serving_max_latency_growth",
                "max_rate_drop": "serving_max_rate_drop", "gate": "gate_serving"},
    "ttft": {"max_growth": "ttft_max_growth", "gate": "gate_ttft"},
}


def load_policy(path: str | Path) -> Policy:
    """A TOML policy: [speed] max_drop, alpha, gate; [memory] max_growth, gate;
    [accuracy] min_ratio, gate; and [[case]] entries, each a ``match`` glob on case ids
    (a benchmark: ``"minilm/infer:int8[*"``) with the same tables for the cases it fits,
    e.g. ``speed.max_drop = 0.10``. Unknown keys and wrong types are refused in one line."""
    source = str(path)
    data = parse_toml(read_bounded_text(path, "policy file", limit=MIB), source)
    entries = data.pop("case", [])
    if not isinstance(entries, list):
        raise BenchInputError(source, "expected [[case]] tables", key="case")
    overrides = []
    for index, entry in enumerate(entries):
        where = f"case[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
            raise BenchInputError(source, "each [[case]] needs a match glob",
                                  key=f"{where}.match", valid='a glob on case ids, e.g. '
                                                             '"minilm/infer:int8[*"')
        settings = _policy_values({k: v for k, v in entry.items() if k != "match"}, source,
                                  f"{where}.")
        overrides.append((entry["match"], tuple(settings.items())))
    return replace(Policy(), **_policy_values(data, source, ""), overrides=tuple(overrides))


def _policy_values(data: dict[str, Any], source: str, prefix: str) -> dict[str, Any]:
    values = {}
    types = {f.name: f.type for f in fields(Policy)}
    for table, content in data.items():
        if table not in _POLICY_TABLES:
            raise BenchInputError(source, "unknown table", key=prefix + table,
                                  valid=sorted([*_POLICY_TABLES, *([] if prefix else ["case"])]))
        if not isinstance(content, dict):
            raise BenchInputError(source, "expected a table", key=prefix + table)
        for key, value in content.items():
            name = _POLICY_TABLES[table].get(key)
            if name is None:
                raise BenchInputError(source, "unknown key", key=f"{prefix}{table}.{key}",
                                      valid=sorted(_POLICY_TABLES[table]))
            if types[name] == "str":
                if value not in INCONCLUSIVE_ACTIONS:
                    raise BenchInputError(source, f"unknown value {value!r}",
                                          key=f"{prefix}{table}.{key}",
                                          valid=", ".join(INCONCLUSIVE_ACTIONS))
                values[name] = value
                continue
            want_bool = types[name] == "bool"
            if want_bool != isinstance(value, bool) or (
                    not want_bool and not isinstance(value, int | float)):
                raise BenchInputError(source, f"expected {'boolean' if want_bool else 'number'}"
                                      f", got {value!r}", key=f"{prefix}{table}.{key}")
            if not want_bool:
                low, high, low_in, high_in = _POLICY_RANGES[name]
                inside = (value >= low if low_in else value > low) and \
                    (value <= high if high_in else value < high)
                if not (math.isfinite(value) and inside):
                    valid = (f"{'[' if low_in else '('}{low:g}, {high:g}"
                             f"{']' if high_in else ')'}")
                    raise BenchInputError(source, f"value {value!r} is out of range",
                                          key=f"{prefix}{table}.{key}",
                                          valid=f"a number in {valid}")
            values[name] = value
    return values


INCONCLUSIVE_ACTIONS = ("fail", "warn")
# The slowdown a session could have detected, at 80% power and the policy's alpha, from its
# CI half-width h on the log scale: (z_{1-alpha/2} + z_0.8) / z_{1-alpha/2} * h (normal
# approximation of both the t and the bootstrap intervals).
DETECTION_POWER_Z = 0.8416


def detectable_slowdown(c: CaseComparison, alpha: float) -> float | None:
    """The smallest slowdown (a fraction) this comparison would have flagged 80% of the
    time: what a pass is worth."""
    if c.speed is None:
        return None
    low, high = c.speed.time.ci_low, c.speed.time.ci_high
    if not (low > 0 and math.isfinite(high)):
        return None
    half = (math.log(high) - math.log(low)) / 2
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return 1 - math.exp(-half * (z + DETECTION_POWER_Z) / z)


def speed_verdict(c: CaseComparison, policy: Policy) -> str | None:
    """regression | no regression | improvement | inconclusive, for a case with a speed
    comparison: "no regression" only when the CI excludes a drop beyond max_drop (an
    equivalence bound), never merely because nothing was significant."""
    if not policy.gate_speed or c.speed is None:
        return None
    worse, better = check_speed(c, policy)
    if worse:
        return "regression"
    if better:
        return "improvement"
    test = _sequential(c, policy)
    if test is not None:
        return "no regression" if test.decide(c.speed.log_ratios) == NO_REGRESSION \
            else "inconclusive"
    low = c.speed.ci[0]
    return "no regression" if low >= 1 - policy.speed_max_drop else "inconclusive"


def _sequential(c: CaseComparison, policy: Policy) -> SequentialTest | None:
    """The sequential test judging this comparison: paired rounds only."""
    if c.speed is None or c.speed.log_ratios is None:
        return None
    return policy.sequential_test()


@dataclass(frozen=True)
class Finding:
    case_id: str
    check: str
    text: str
    # A timed verdict the host's noise kept the gate from reaching (contention, or rounds
    # and trials too spread to decide): no verdict, rather than a failure of the code.
    noise: bool = False


# bench gate / bench ab exit codes.
EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_NOISY = (exit_codes.OK, exit_codes.FAILED,
                                                    exit_codes.BAD_INPUT, exit_codes.NO_VERDICT)


@dataclass
class GateReport:
    regressions: list[Finding] = field(default_factory=list)
    improvements: list[Finding] = field(default_factory=list)
    # Cases (or the whole comparison) the gate could not judge: failures, never passes.
    inconclusive: list[Finding] = field(default_factory=list)
    # Cases measured now whose baseline could not run: said, neither failure nor gain.
    not_compared: list[Finding] = field(default_factory=list)
    # Inconclusive speed under a "warn" policy, a class loss the baseline had too: listed,
    # not failed.
    warnings: list[Finding] = field(default_factory=list)
    # Per case with a speed comparison: (verdict, ratio, CI, detectable slowdown).
    verdicts: dict[str, tuple[str, float, tuple[float, float], float | None]] = \
        field(default_factory=dict)
    # Per case counted on both sides: instructions per step, current / baseline.
    instructions: dict[str, float] = field(default_factory=dict)
    cases: int = 0

    @property
    def exit_code(self) -> int:
        """0 pass; 1 a regression, or a case that could not be judged for a reason of its
        own (a missing figure, unpaired rounds, too few trials); 3 nothing but speed left
        undecided by the host's noise (contention, spread): no verdict, not a failure."""
        if self.regressions or any(not f.noise for f in self.inconclusive):
            return EXIT_FAIL
        return EXIT_NOISY if self.inconclusive else EXIT_PASS

    @property
    def verdict(self) -> str:
        if self.exit_code == EXIT_FAIL:
            return "FAIL" if self.regressions else "INCONCLUSIVE (fails)"
        if self.exit_code == EXIT_NOISY:
            return "NO VERDICT (the host was too noisy to decide speed: exit 3)"
        return "PASS (with warnings)" if self.warnings else "PASS"


Check = Callable[[CaseComparison, Policy], tuple[str | None, str | None]]


def check_status(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    # A contended case was measured: it is inconclusive (CaseComparison.problems), not lost.
    base_ok = c.baseline is not None and c.baseline.measured
    cur_ok = c.current is not None and c.current.measured
    if base_ok and not cur_ok:
        reason = f" ({c.current.reason})" if c.current is not None and c.current.reason else ""
        return f"status {c.status_change}{reason}", None
    # A baseline that could not run is no improvement: nothing was compared (not_compared).
    return None, None


def not_compared(c: CaseComparison) -> str | None:
    """Why a case measured now has nothing to be compared with (no verdict either way)."""
    if c.current is None or not c.current.measured or c.baseline is None or \
            c.baseline.measured:
        return None
    reason = f": {c.baseline.reason}" if c.baseline.reason else ""
    return (f"the baseline could not run ({c.baseline.status}{reason}); now "
            f"{c.current.status}")


def check_speed(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    if not policy.gate_speed or c.speed is None:
        return None, None
    ratio, (low, high) = c.speed.ratio, c.speed.ci
    pairs = c.speed.time.pairs
    text = (f"speed x{ratio:.3f} (95% CI {low:.3f}–{high:.3f}, "
            f"p={c.speed.time.p_value:.2g}{f', {pairs} paired rounds' if pairs else ''})")
    test = _sequential(c, policy)
    if test is not None and test.decide(c.speed.log_ratios) == REGRESSION:
        llr = float(test.log_likelihood_ratio(c.speed.log_ratios))
        if llr >= test.upper:
            return (f"{text}; the rounds favour a {policy.speed_max_drop:.0%} drop over none "
                    f"(sequential test: LLR {llr:.1f} >= {test.upper:.1f})"), None
        return (f"{text}; the rounds' lower {1 - test.false_alarm:.1%} confidence bound is a "
                f"slowdown beyond {policy.speed_max_drop:.0%}"), None
    if not c.speed.time.significant(policy.speed_alpha):
        return None, None
    if ratio < 1 - policy.speed_max_drop and test is None:
        return text, None
    if ratio > 1 / (1 - policy.speed_max_drop):
        return None, text
    return None, None


def check_memory(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    if not policy.gate_memory or c.memory_ratio is None:
        return None, None
    text = f"{c.memory_kind} x{c.memory_ratio:.3f}"
    if c.memory_ratio > 1 + policy.memory_max_growth:
        return text, None
    if c.memory_ratio < 1 / (1 + policy.memory_max_growth):
        return None, text
    return None, None


def check_accuracy(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    if not policy.gate_accuracy or c.accuracy_ratio is None:
        return None, None
    target = policy.accuracy_min_ratio if policy.accuracy_min_ratio is not None else \
        (c.accuracy_target or DEFAULT_PARITY_TARGET)
    text = f"{c.accuracy_metric} at {c.accuracy_ratio:.4f} of baseline (target {target:g})"
    if c.accuracy_ratio < target:
        return text, None
    if c.accuracy_ratio > 1 / target:
        return None, text
    return None, None


def check_classes(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    """Per-class recall against the baseline's same case: one class lost beyond
    ``max_class_drop`` regresses even where the overall metric holds."""
    if not policy.gate_accuracy or c.current is None or not c.current.measured or \
            c.baseline is None or not c.baseline.measured:
        return None, None
    worst = worst_class(c.current, c.baseline)
    if worst is None or worst.drop <= policy.accuracy_max_class_drop:
        return None, None
    return (f"{worst.describe()} against the baseline (drop {worst.drop:.3f} > "
            f"{policy.accuracy_max_class_drop:g})"), None


def check_time_to_accuracy(c: CaseComparison,
                           policy: Policy) -> tuple[str | None, str | None]:
    """Olympic time to target against the baseline's, judged over the seeds."""
    tta = c.time_to_accuracy
    if not policy.gate_tta or tta is None or tta.ratio is None or \
            not tta.decidable(policy.speed_alpha) or tta.p_value >= policy.speed_alpha:
        return None, None
    text = (f"time to target x{tta.ratio:.3f} (Mann-Whitney p={tta.p_value:.2g} over "
            f"{tta.seeds_baseline}+{tta.seeds_current} seeds)")
    if tta.ratio > 1 + policy.tta_max_growth:
        return text, None
    if tta.ratio < 1 / (1 + policy.tta_max_growth):
        return None, text
    return None, None


def check_instructions(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    """Instructions per step against the baseline's, where the baseline was counted."""
    if not policy.gate_instructions or c.current is None or \
            instructions_per_step(c.baseline) is None:
        return None, None
    if c.instructions_ratio is None:
        return "the baseline's instructions were counted, the current run's not", None
    text = f"instructions per step x{c.instructions_ratio:.4f} (callgrind)"
    if c.instructions_ratio > 1 + policy.instructions_max_growth:
        return text, None
    if c.instructions_ratio < 1 / (1 + policy.instructions_max_growth):
        return None, text
    return None, None


def check_serving(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    """A LoadGen scenario against the baseline's: latency percentile, capacity or samples/s,
    and a server bound lost."""
    sv = c.serving
    if not policy.gate_serving or sv is None:
        return None, None
    tokens = sv.token_ratios
    text = (f"{sv.scenario}: {sv.percentile} latency x{sv.latency_ratio:.3f}, "
            + "".join(f"{sv.percentile} {name} x{ratio:.3f}, " for name, ratio in tokens.items())
            + f"{sv.rate_kind} x{sv.rate_ratio:.3f} (one LoadGen run a side: no CI)")
    latencies = [sv.latency_ratio, *tokens.values()]
    growth = 1 + policy.serving_max_latency_growth
    if sv.bound_lost or max(latencies) > growth or \
            sv.rate_ratio < 1 - policy.serving_max_rate_drop:
        bound = "the TTFT/TPOT bound" if tokens else "the latency bound"
        return text + (f"; {bound} met before is missed now" if sv.bound_lost else ""), None
    if max(latencies) < 1 / growth or sv.rate_ratio > 1 / (1 - policy.serving_max_rate_drop):
        return None, text
    return None, None


def check_ttft(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    """A generation case's time to first token over calls against the baseline's."""
    est = c.ttft
    if not policy.gate_ttft or est is None:
        return None, None
    text = (f"TTFT x{est.ratio:.3f} (time, 95% CI {est.ci_low:.3f}-{est.ci_high:.3f}, "
            f"p={est.p_value:.2g}, {est.n_baseline}+{est.n_current} calls)")
    if not est.significant(policy.speed_alpha):
        return None, None
    if est.ratio > 1 + policy.ttft_max_growth:
        return text, None
    if est.ratio < 1 / (1 + policy.ttft_max_growth):
        return None, text
    return None, None


CHECKS: dict[str, Check] = {"status": check_status, "speed": check_speed,
                            "memory": check_memory, "accuracy": check_accuracy,
                            "classes": check_classes, "time_to_accuracy": check_time_to_accuracy,
                            "instructions": check_instructions, "serving": check_serving,
                            "ttft": check_ttft}


# The checks whose figures are times, which contention slows (the others: status, memory,
# the task metric, instructions per step, do not depend on how fast the CPU ran).
TIMED_CHECKS = frozenset({"speed", "time_to_accuracy", "serving", "ttft"})
CONTENDED_VERDICT = "inconclusive (contended)"


@dataclass(frozen=True)
class Contention:
    """Which sides of a comparison were timed under contention, with the worker's reason."""
    baseline: str | None = None
    current: str | None = None

    @classmethod
    def of(cls, c: CaseComparison) -> Contention:
        def reason(case):  # noqa: ANN001, ANN202
            if case is None or case.status != STATUS_CONTENDED:
                return None
            return case.reason or "no reason recorded"
        return cls(reason(c.baseline), reason(c.current))

    def doubts_worse(self) -> str | None:
        """Why a slowdown of this comparison may be the contention's (None: it stands)."""
        return _slowed("current", self.current, "that alone slows it, so a slowdown cannot "
                       "be judged; rerun on a quiet machine")

    def doubts_pass(self) -> str | None:
        """Why a pass or a gain of this comparison may be the contention's."""
        return _slowed("baseline", self.baseline, "a slowed baseline can hide a slowdown, so "
                       "only a regression could be judged; measure the baseline again")

    def verdict(self, verdict: str) -> str:
        """A speed verdict as contention leaves it."""
        if verdict == "regression" and self.doubts_worse() or \
                verdict in ("no regression", "improvement") and self.doubts_pass():
            return CONTENDED_VERDICT
        return verdict


def _slowed(side: str, reason: str | None, consequence: str) -> str | None:
    if reason is None:
        return None
    return f"the {side} case was timed while other processes used the CPU ({reason}): " \
           f"{consequence}"


def _timed_gated(c: CaseComparison, policy: Policy) -> bool:
    """Whether the policy judges any timed figure this comparison has."""
    return (policy.gate_speed and c.speed is not None) or \
        (policy.gate_tta and c.time_to_accuracy is not None) or \
        (policy.gate_serving and c.serving is not None) or \
        (policy.gate_ttft and c.ttft is not None)


def judgeability(c: CaseComparison, policy: Policy) -> list[Problem]:
    """Why the gate cannot judge this case (empty: it can): the comparison's problems of
    the checks the policy gates, and a test too small to reach alpha."""
    gated = {"speed": policy.gate_speed, "memory": policy.gate_memory,
             "accuracy": policy.gate_accuracy, "time_to_accuracy": policy.gate_tta,
             "serving": policy.gate_serving, "ttft": policy.gate_ttft}
    reasons = [p for p in c.problems if gated.get(p.check, True)]
    tta = c.time_to_accuracy
    if policy.gate_tta and tta is not None and not tta.decidable(policy.speed_alpha):
        need = min_trials_for_verdict(policy.speed_alpha)
        reasons.append(Problem(
            "time_to_accuracy", f"{tta.seeds_baseline} baseline and {tta.seeds_current} "
            f"current seeds: Mann-Whitney cannot reach p < {policy.speed_alpha:g} (smallest p "
            f"{tta.smallest_p:.3g}); too few seeds to decide: run at least {need} per side"))
    if policy.gate_speed and c.speed is not None and \
            c.speed.time.smallest_p >= policy.speed_alpha:
        est = c.speed.time
        if est.pairs is not None:
            reasons.append(Problem("speed", f"{est.pairs} paired rounds cannot reach "
                                            f"p < {policy.speed_alpha:g}" + dropped_rounds(c)))
        else:
            need = min_trials_for_verdict(policy.speed_alpha)
            reasons.append(Problem(
                "speed", f"{est.n_baseline} baseline and {est.n_current} current trials: "
                f"Mann-Whitney cannot reach p < {policy.speed_alpha:g} (smallest p "
                f"{est.smallest_p:.3g}); a verdict needs at least {need} trials per side"))
    return reasons


def evaluate(comparisons: list[CaseComparison], policy: Policy) -> GateReport:
    report = GateReport(cases=len(comparisons))
    baseline_cases = [c.baseline for c in comparisons if c.baseline is not None]
    if not any(b.measured for b in baseline_cases):
        report.inconclusive.append(Finding(
            "(all)", "baseline", f"the baseline has no measured case "
            f"({len(baseline_cases)} cases, none ok): nothing to judge against"))
    current = [c.current for c in comparisons if c.current is not None]
    slos = slo_failures(current)
    lost_class = class_parity_failures(current, policy.accuracy_max_class_drop) \
        if policy.gate_accuracy else {}
    lost_before = class_parity_failures(baseline_cases, policy.accuracy_max_class_drop) \
        if policy.gate_accuracy else {}
    for c in comparisons:
        case_policy = policy.for_case(c.case_id)
        if c.current is not None and c.current.rounds is not None and \
                c.current.rounds.out_of_time:
            report.inconclusive.append(Finding(c.case_id, "speed", c.current.reason or
                                               "not measured", noise=True))
            continue
        if slos.get(c.case_id):  # the suite's own service levels: no baseline needed
            report.regressions.append(Finding(c.case_id, "slo", "; ".join(slos[c.case_id])))
        if lost_class.get(c.case_id):  # a variant against its own reference, this run
            if c.case_id in lost_before:  # not this change's doing
                report.warnings.append(Finding(c.case_id, "class parity",
                                               f"{lost_class[c.case_id]}; the baseline lost "
                                               "it too: not a regression"))
            else:
                report.regressions.append(Finding(c.case_id, "class parity",
                                                  lost_class[c.case_id]))
        contention = Contention.of(c)
        timed_regression = False
        for name, check in CHECKS.items():
            worse, better = check(c, case_policy)
            if name in TIMED_CHECKS:
                if worse and (doubt := contention.doubts_worse()):
                    report.inconclusive.append(Finding(c.case_id, name, f"{worse}; but {doubt}",
                                                       noise=True))
                    worse = None
                if better and contention.doubts_pass():
                    better = None  # a slowed baseline flatters: the pass doubt below says so
                timed_regression = timed_regression or bool(worse)
            if worse:
                report.regressions.append(Finding(c.case_id, name, worse))
            if better:
                report.improvements.append(Finding(c.case_id, name, better))
        if (doubt := contention.doubts_pass()) and not timed_regression and \
                _timed_gated(c, case_policy):
            report.inconclusive.append(Finding(c.case_id, "contended", doubt, noise=True))
        if c.instructions_ratio is not None:
            report.instructions[c.case_id] = c.instructions_ratio
        if (text := not_compared(c)) is not None:
            report.not_compared.append(Finding(c.case_id, "baseline", text))
        problems = judgeability(c, case_policy)
        # Rounds or trials too few because contended ones were left out, or taken under
        # contention: the host's noise.
        short_of_rounds = bool(dropped_rounds(c)) or contention != Contention()
        for problem in problems:
            report.inconclusive.append(Finding(c.case_id, problem.check, problem.text,
                                               noise=short_of_rounds and
                                               problem.check == "speed"))
        _speed_verdict(report, c, case_policy, judged=not any(p.check == "speed"
                                                              for p in problems))
    return report


def dropped_rounds(c: CaseComparison) -> str:
    """What bench ab left out of the pairing (round pairs timed under contention)."""
    for side in (c.current, c.baseline):
        rounds = side.rounds if side is not None else None
        if rounds is not None and rounds.left_out:
            reasons = rounds.left_out_reasons or ["no reason recorded"]
            return (f"; {rounds.left_out} contended round pairs left out of "
                    f"{rounds.left_out + len(rounds.medians_s)} (e.g. {reasons[0]})")
    return ""


def _speed_verdict(report: GateReport, c: CaseComparison, policy: Policy, judged: bool) -> None:
    verdict = speed_verdict(c, policy) if judged and c.current is not None and \
        c.current.measured and c.baseline is not None and c.baseline.measured else None
    if verdict is None:
        return
    verdict = Contention.of(c).verdict(verdict)  # its finding: evaluate's contention doubts
    detectable = detectable_slowdown(c, policy.speed_alpha)
    report.verdicts[c.case_id] = (verdict, c.speed.ratio, c.speed.ci, detectable)
    if verdict == "inconclusive":
        low, high = c.speed.ci
        text = (f"speed x{c.speed.ratio:.3f} (95% CI {low:.3f}–{high:.3f}): neither a "
                f"regression nor excludes a drop beyond {policy.speed_max_drop:.0%}"
                + (f"; this session detects about {detectable:.1%}" if detectable else "")
                + dropped_rounds(c))
        target = report.inconclusive if policy.speed_inconclusive == "fail" else \
            report.warnings
        target.append(Finding(c.case_id, "speed", text, noise=True))


def report_json(report: GateReport) -> dict[str, Any]:
    """``bench gate --json``: the verdict, its exit code and every finding by kind."""
    def findings(items: list[Finding]) -> list[dict[str, str]]:
        return [{"case_id": f.case_id, "check": f.check, "text": f.text} for f in items]

    return {
        "verdict": report.verdict, "exit_code": report.exit_code, "cases": report.cases,
        "regressions": findings(report.regressions),
        "cannot_judge": findings([f for f in report.inconclusive if not f.noise]),
        "no_verdict_for_noise": findings([f for f in report.inconclusive if f.noise]),
        "not_compared": findings(report.not_compared),
        "warnings": findings(report.warnings),
        "improvements": findings(report.improvements),
        "speed": {case_id: {"verdict": verdict, "ratio": ratio,
                            "ci95": [low, high if math.isfinite(high) else None],
                            "detectable_slowdown": detectable}
                  for case_id, (verdict, ratio, (low, high), detectable)
                  in report.verdicts.items()},
        "instructions": report.instructions,
    }


def markdown(report: GateReport, baseline: str, current: str, policy: Policy,
             host_probes: tuple[list[HostProbe], list[HostProbe]] = ([], [])) -> str:
    """The gate's summary; with both runs' host probes, the host's change beside the
    speed ratios (reported, never gated)."""
    lines = [f"## bench gate: {report.verdict}", "",
             f"{report.cases} cases; baseline `{baseline}`, current `{current}`; "
             f"{len(report.regressions)} regressions, {len(report.inconclusive)} cannot "
             f"judge, {len(report.improvements)} improvements"
             + (f", {len(report.not_compared)} not compared (baseline could not run)"
                if report.not_compared else "") + ".",
             "",
             f"Policy: speed drop > {policy.speed_max_drop:.0%} and significant "
             f"(p < {policy.speed_alpha:g}, CI excludes 1)"
             + (f"; paired A/B rounds: sequential test of no change against a "
                f"{policy.speed_max_drop:.0%} drop (false alarm {policy.speed_false_alarm:g}, "
                f"miss {policy.speed_miss:g} per case)" if policy.sequential_test() else "")
             + f"{'' if policy.gate_speed else ' (off)'}"
             f"; memory growth > {policy.memory_max_growth:.0%}"
             f"{'' if policy.gate_memory else ' (off)'}; accuracy below "
             + (f"{policy.accuracy_min_ratio:g}" if policy.accuracy_min_ratio is not None
                else "each case's parity target")
             + f" of baseline{'' if policy.gate_accuracy else ' (off)'}, or one class's recall "
             f"down > {policy.accuracy_max_class_drop:g}; time to target slower > "
             f"{policy.tta_max_growth:.0%} and significant over seeds"
             f"{'' if policy.gate_tta else ' (off)'}; ok -> not ok"
             + (f"; {len(policy.overrides)} [[case]] entries change it for the cases they "
                "match" if policy.overrides else "") + "; each case's suite SLO, if any.", ""]
    if host_text := describe_ratio(*host_probes):
        lines += [host_text, ""]
    host = (host_ratio(*host_probes) or {}).get("host")
    if report.verdicts:
        lines += ["### Speed verdicts", "",
                  "| case | verdict | speed x (95% CI) | detectable slowdown (80% power) |"
                  + (" speed ÷ host |" if host else ""),
                  "|---|---|---|---|" + ("---|" if host else "")]
        lines += [f"| `{case_id}` | {verdict} | {ratio:.3f} ({low:.3f}–{high:.3f}) | "
                  f"{'' if d is None else f'{d:.1%}'} |"
                  + (f" {ratio / host:.3f} |" if host else "")
                  for case_id, (verdict, ratio, (low, high), d) in report.verdicts.items()]
        lines.append("")
    if report.instructions:
        lines += ["### Instructions per step (callgrind; beside wall time, not instead)", "",
                  f"| case | current / baseline | gated (> {policy.instructions_max_growth:.1%}) |",
                  "|---|---|---|"]
        lines += [f"| `{case_id}` | {ratio:.4f} | {'yes' if policy.gate_instructions else 'no'} |"
                  for case_id, ratio in report.instructions.items()]
        lines.append("")
    own = [f for f in report.inconclusive if not f.noise]
    noisy = [f for f in report.inconclusive if f.noise]
    for title, findings in (("Regressions", report.regressions),
                            ("Cannot judge (each counts as a failure)", own),
                            ("Cannot judge for the host's noise (no verdict: exit 3 unless "
                             "a failure above)", noisy),
                            ("Not compared: the baseline could not run (no verdict)",
                             report.not_compared),
                            ("Warnings (not failed: speed inconclusive under the policy's "
                             "inconclusive = \"warn\", a class the baseline lost too)",
                             report.warnings),
                            ("Improvements (consider refreshing the baseline)",
                             report.improvements)):
        if findings:
            lines += [f"### {title}", "", "| case | check | change |", "|---|---|---|"]
            lines += [f"| `{f.case_id}` | {f.check} | {f.text} |" for f in findings]
            lines.append("")
    return "\n".join(lines) + "\n"


def refuse_misleading_pair(base_name: str, baseline: RunRecord, cur_name: str,
                           current: RunRecord, allow_injected: bool) -> None:
    """Refuse (exit 2) to gate files whose verdict would not mean what it says: a run with
    a test-injected slowdown, or an A/B session whose two sides ran the same code or not
    the code they declare. Every front door that gates a pair calls it first."""
    if not allow_injected:
        for name, record in ((base_name, baseline), (cur_name, current)):
            injected = run_injected_slowdowns(record)
            if injected:
                case_id, fraction = next(iter(injected.items()))
                raise BenchInputError(name, f"{len(injected)} cases ran with an injected "
                                      f"slowdown (BENCH_TEST_SLOWDOWN; {case_id}: "
                                      f"+{fraction:.0%}); pass --allow-injected-slowdown "
                                      "to gate it anyway")
    if paired_session(baseline, current) is None:
        return
    declared = [r.run.pairing.get("source") for r in (baseline, current)]
    envs = [r.run.pairing.get("env") or {} for r in (baseline, current)]
    ran = [{c.case_id: c.worker.get("bench_source") for c in r.cases if c.worker}
           for r in (baseline, current)]
    for side, name, record, source in zip(("baseline", "current"), (base_name, cur_name),
                                          (baseline, current), declared, strict=True):
        wrong = [c.case_id for c in record.cases
                 if c.worker.get("bench_source") not in (None, source)]
        if wrong:
            raise BenchInputError(name, f"the {side} side was declared as {source} but its "
                                  f"worker ran the bench package at "
                                  f"{record.case(wrong[0]).worker.get('bench_source')} "
                                  f"({wrong[0]}); refusing a session that did not measure "
                                  "what it says")
    same = [cid for cid, src in ran[1].items() if src is not None and ran[0].get(cid) == src]
    # A user's project A/B (bench ab --baseline-ref in their repository): one bench, the
    # user's models at two commits.
    suites = [r.run.pairing.get("suite_commit") or r.run.pairing.get("suite")
              for r in (baseline, current)]
    if same and envs[0] == envs[1] and suites[0] == suites[1]:
        raise BenchInputError(cur_name, f"both sides of the A/B session ran the same code "
                              f"({ran[1][same[0]]}) with the same environment: the session "
                              "compares the code with itself")
