"""The CI regression gate: a policy applied to a comparison, and its markdown summary.

A case regresses when (each check a small strategy over a ``CaseComparison``):
- status: it was ok in the baseline and is not now (or has gone missing);
- speed: slower by more than ``speed.max_drop`` AND significant (p < alpha and the
  ratio's 95% CI excludes 1), so noise alone does not fail a build. The test is a
  Mann-Whitney U on trials for two separate runs, a paired t-test on the rounds of an
  interleaved A/B session (``bench ab``), where machine drift cancels;
- memory: peak grew by more than ``memory.max_growth``;
- accuracy: task metric below ``accuracy.min_ratio`` of the baseline (default: the
  suite's parity target for the case, 0.99).
Changes as large the other way are listed as improvements, so baselines get refreshed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from bench.errors import BenchInputError
from bench.reports.compare import CaseComparison


@dataclass(frozen=True)
class Policy:
    speed_max_drop: float = 0.05
    speed_alpha: float = 0.05
    memory_max_growth: float = 0.10
    accuracy_min_ratio: float | None = None  # None: the case's parity target
    gate_speed: bool = True
    gate_memory: bool = True
    gate_accuracy: bool = True


_POLICY_TABLES = {
    "speed": {"max_drop": "speed_max_drop", "alpha": "speed_alpha", "gate": "gate_speed"},
    "memory": {"max_growth": "memory_max_growth", "gate": "gate_memory"},
    "accuracy": {"min_ratio": "accuracy_min_ratio", "gate": "gate_accuracy"},
}


def load_policy(path: str | Path) -> Policy:
    """A TOML policy: [speed] max_drop, alpha, gate; [memory] max_growth, gate;
    [accuracy] min_ratio, gate. Unknown keys and wrong types are refused in one line."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise BenchInputError(source, f"cannot read policy file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchInputError(source, f"malformed TOML: {exc}") from None
    values = {}
    types = {f.name: f.type for f in fields(Policy)}
    for table, content in data.items():
        if table not in _POLICY_TABLES:
            raise BenchInputError(source, "unknown table", key=table, valid=sorted(_POLICY_TABLES))
        if not isinstance(content, dict):
            raise BenchInputError(source, "expected a table", key=table)
        for key, value in content.items():
            name = _POLICY_TABLES[table].get(key)
            if name is None:
                raise BenchInputError(source, "unknown key", key=f"{table}.{key}",
                                      valid=sorted(_POLICY_TABLES[table]))
            want_bool = types[name] == "bool"
            if want_bool != isinstance(value, bool) or (
                    not want_bool and not isinstance(value, int | float)):
                raise BenchInputError(source, f"expected {'boolean' if want_bool else 'number'}"
                                      f", got {value!r}", key=f"{table}.{key}")
            if not want_bool and value < 0:
                raise BenchInputError(source, f"value {value!r} is negative",
                                      key=f"{table}.{key}", valid="number >= 0")
            values[name] = value
    return replace(Policy(), **values)


@dataclass(frozen=True)
class Finding:
    case_id: str
    check: str
    text: str


@dataclass
class GateReport:
    regressions: list[Finding] = field(default_factory=list)
    improvements: list[Finding] = field(default_factory=list)
    cases: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


Check = Callable[[CaseComparison, Policy], tuple[str | None, str | None]]


def check_status(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    base_ok = c.baseline is not None and c.baseline.status == "ok"
    cur_ok = c.current is not None and c.current.status == "ok"
    if base_ok and not cur_ok:
        reason = f" ({c.current.reason})" if c.current is not None and c.current.reason else ""
        return f"status {c.status_change}{reason}", None
    if c.baseline is not None and not base_ok and cur_ok:
        return None, f"status {c.status_change}"
    return None, None


def check_speed(c: CaseComparison, policy: Policy) -> tuple[str | None, str | None]:
    if not policy.gate_speed or c.speed is None:
        return None, None
    ratio, (low, high) = c.speed.ratio, c.speed.ci
    pairs = c.speed.time.pairs
    text = (f"speed x{ratio:.3f} (95% CI {low:.3f}–{high:.3f}, "
            f"p={c.speed.time.p_value:.2g}{f', {pairs} paired rounds' if pairs else ''})")
    if not c.speed.time.significant(policy.speed_alpha):
        return None, None
    if ratio < 1 - policy.speed_max_drop:
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
        (c.accuracy_target or 0.99)
    text = f"{c.accuracy_metric} at {c.accuracy_ratio:.4f} of baseline (target {target:g})"
    if c.accuracy_ratio < target:
        return text, None
    if c.accuracy_ratio > 1 / target:
        return None, text
    return None, None


CHECKS: dict[str, Check] = {"status": check_status, "speed": check_speed,
                            "memory": check_memory, "accuracy": check_accuracy}


def evaluate(comparisons: list[CaseComparison], policy: Policy) -> GateReport:
    report = GateReport(cases=len(comparisons))
    for c in comparisons:
        for name, check in CHECKS.items():
            worse, better = check(c, policy)
            if worse:
                report.regressions.append(Finding(c.case_id, name, worse))
            if better:
                report.improvements.append(Finding(c.case_id, name, better))
    return report


def markdown(report: GateReport, baseline: str, current: str, policy: Policy) -> str:
    verdict = "FAIL" if report.regressions else "PASS"
    lines = [f"## bench gate: {verdict}", "",
             f"{report.cases} cases; baseline `{baseline}`, current `{current}`; "
             f"{len(report.regressions)} regressions, {len(report.improvements)} improvements.",
             "",
             f"Policy: speed drop > {policy.speed_max_drop:.0%} and significant "
             f"(p < {policy.speed_alpha:g}, CI excludes 1){'' if policy.gate_speed else ' (off)'}"
             f"; memory growth > {policy.memory_max_growth:.0%}"
             f"{'' if policy.gate_memory else ' (off)'}; accuracy below "
             + (f"{policy.accuracy_min_ratio:g}" if policy.accuracy_min_ratio is not None
                else "each case's parity target")
             + f" of baseline{'' if policy.gate_accuracy else ' (off)'}; ok -> not ok.", ""]
    for title, findings in (("Regressions", report.regressions),
                            ("Improvements (consider refreshing the baseline)",
                             report.improvements)):
        if findings:
            lines += [f"### {title}", "", "| case | check | change |", "|---|---|---|"]
            lines += [f"| `{f.case_id}` | {f.check} | {f.text} |" for f in findings]
            lines.append("")
    return "\n".join(lines) + "\n"
