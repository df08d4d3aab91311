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
class Parity:
    metric: str
    value: float
    reference: float
    ratio: float
    target: float
    reference_case: str

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target  # False for NaN: NaN never passes a bound


__all__ = ["Parity", "is_reference", "parity_by_case", "variant_choices"]


def variant_choices(case: CaseResult) -> dict[str, object]:
    """The variant axes where the case differs from its reference."""
    return {axis: case.axes[axis] for axis, value in case.parity_reference.items()
            if axis in case.axes and case.axes[axis] != value}


def parity_by_case(cases: list[CaseResult]) -> dict[str, Parity]:
    """Parity of every ok case whose reference case in the same run is ok too."""
    references = {shape_key(c): c for c in cases
                  if c.measured and c.accuracy and is_reference(c)}
    out: dict[str, Parity] = {}
    for case in cases:
        acc = case.accuracy
        if not case.measured or acc is None or acc.task_metric is None:
            continue
        ref = references.get(shape_key(case))
        if ref is None or ref.accuracy is None:
            continue
        value = acc.metrics.get(acc.task_metric)
        reference = ref.accuracy.metrics.get(acc.task_metric)
        if value is None or reference is None:
            continue
        ratio = metric_ratio(value, reference, acc.higher_is_better)
        out[case.case_id] = Parity(acc.task_metric, value, reference, ratio,
                                   acc.parity_target, ref.case_id)
    return out
