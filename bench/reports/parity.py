"""Accuracy parity: each case's task metric as a ratio to its reference case.

A case's reference is the case of the same benchmark and shape whose variant axes
(precision, backend, quantization, pruning, distillation: ``Setting.variant``) all hold
their declared defaults (fp32, eager, none...), as each record carries them in
``CaseResult.parity_reference``.

ratio = metric / reference for higher-is-better metrics (accuracy), and
reference / metric for lower-is-better ones (MSE, loss), so a ratio below 1 is always
worse. A case passes at ratio >= its benchmark's ``parity_target`` (default 0.99, as
MLPerf's 99% of fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.reports.compare import metric_ratio
from bench.results.schema import CaseResult
from bench.spec.model import is_reference, shape_key


@dataclass(frozen=True)
class ClassDrop:
    """The class whose recall fell most from the reference's (error analysis)."""

    label: str
    reference_recall: float
    recall: float

    @property
    def drop(self) -> float:
        return self.reference_recall - self.recall

    def describe(self) -> str:
        return f"class {self.label} recall {self.reference_recall:.3f} -> {self.recall:.3f}"


def worst_class(case: CaseResult, reference: CaseResult | None) -> ClassDrop | None:
    """The largest per-class recall drop of ``case`` against ``reference`` (None when
    either lacks per-class figures or their classes differ)."""
    if reference is None or case.classes is None or reference.classes is None or \
            case.classes.labels != reference.classes.labels:
        return None
    drops = [ClassDrop(label, ref, now) for label, ref, now in
             zip(case.classes.labels, reference.classes.recall, case.classes.recall,
                 strict=True)]
    return max(drops, key=lambda d: d.drop) if drops else None


@dataclass(frozen=True)
class Parity:
    metric: str
    value: float
    reference: float
    ratio: float
    target: float
    reference_case: str
    worst_class: ClassDrop | None = None

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target  # False for NaN: NaN never passes a bound


__all__ = ["ClassDrop", "Parity", "class_parity_failures", "is_reference", "parity_by_case",
           "references_by_case", "variant_choices", "worst_class"]


def variant_choices(case: CaseResult) -> dict[str, object]:
    """The variant axes where the case differs from its reference."""
    return {axis: case.axes[axis] for axis, value in case.parity_reference.items()
            if axis in case.axes and case.axes[axis] != value}


def references_by_case(cases: list[CaseResult]) -> dict[str, CaseResult]:
    """Each measured case's measured reference case in the same run."""
    references = {shape_key(c): c for c in cases
                  if c.measured and c.accuracy and is_reference(c)}
    return {c.case_id: references[shape_key(c)] for c in cases
            if c.measured and shape_key(c) in references}


def parity_by_case(cases: list[CaseResult]) -> dict[str, Parity]:
    """Parity of every ok case whose reference case in the same run is ok too."""
    references = references_by_case(cases)
    out: dict[str, Parity] = {}
    for case in cases:
        acc = case.accuracy
        if acc is None or acc.task_metric is None:
            continue
        ref = references.get(case.case_id)
        if ref is None or ref.accuracy is None:
            continue
        value = acc.metrics.get(acc.task_metric)
        reference = ref.accuracy.metrics.get(acc.task_metric)
        if value is None or reference is None:
            continue
        ratio = metric_ratio(value, reference, acc.higher_is_better)
        out[case.case_id] = Parity(acc.task_metric, value, reference, ratio,
                                   acc.parity_target, ref.case_id,
                                   None if ref is case else worst_class(case, ref))
    return out


def class_parity_failures(cases: list[CaseResult], max_drop: float) -> dict[str, str]:
    """Variants that lost one class beyond ``max_drop`` (recall, absolute) against their
    reference in the same run, even where overall accuracy passes parity."""
    failures = {}
    for case_id, parity in parity_by_case(cases).items():
        worst = parity.worst_class
        if worst is not None and worst.drop > max_drop:
            failures[case_id] = (f"{worst.describe()} against {parity.reference_case} "
                                 f"(drop {worst.drop:.3f} > {max_drop:g}; overall "
                                 f"{parity.metric} parity {parity.ratio:.4f})")
    return failures
