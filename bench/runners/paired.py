"""Speed-ups between variants of one run that can be trusted.

Two cases of one sweep run minutes apart in different worker processes, and on a shared
machine that alone moves a figure by more than many variant differences (the same minilm
configuration read 78.1, 80.1 and 91.3 sentences/s within one committed run). So a
variant's speed-up over its parity reference (the case of the same benchmark and shape with
every variant axis at its default: fp32, eager, unquantized, unpruned) is measured the way
``bench ab`` measures two commits: ``rounds`` rounds, each running the reference and the
variant in fresh worker processes back to back (order alternating, ABBA), each round's
ratio of medians one paired sample, and a t-based 95% CI on their log mean
(bench.measurement.stats.paired_ratio). The record keeps every round's medians.

Identical configurations (the same workload, phase, axes, params and budget under two
benchmark labels) are measured once; the later cases share that measurement
(``shared_measurement``).
"""

from __future__ import annotations

import copy

from bench.measurement.stats import paired_ratio
from bench.results.schema import AccuracyResult, CaseResult, PairedSpeedup
from bench.runners.fork_server import ForkServers
from bench.runners.isolation import run_isolated
from bench.runners.plan import PlannedCase
from bench.spec.model import CaseSpec, is_reference, shape_key

PAIRED_METHOD = ("rounds of (reference, case) in fresh worker processes back to back, order "
                 "alternating; per round median(reference) / median(case); geometric mean "
                 "with a t-based 95% CI on the log ratios")


def shared_measurement(original: CaseResult, spec: CaseSpec) -> CaseResult:
    """``original``'s measurement recorded for ``spec``, an identical configuration under
    another benchmark: its own id, label, parity reference and accuracy targets."""
    shared = copy.deepcopy(original)
    shared.case_id, shared.label = spec.case_id, spec.label
    shared.parity_reference = dict(spec.parity_reference)
    shared.slo = dict(spec.slo)
    if original.accuracy is not None:
        task = (original.accuracy.task_metric, original.accuracy.higher_is_better) \
            if original.accuracy.task_metric else None
        shared.accuracy = AccuracyResult.for_case(spec, original.accuracy.metrics, task)
    shared.details = {**original.details, "measured_as": original.case_id}
    shared.warnings = [*original.warnings, f"an identical configuration: measured once, as "
                                           f"{original.case_id}"]
    return shared


def reference_of(case: CaseSpec, planned: list[PlannedCase]) -> CaseSpec | None:
    """The runnable parity reference of a variant case in the same suite (None for a
    reference itself, or when the suite has none)."""
    if is_reference(case):
        return None
    key = shape_key(case)
    return next((p.spec for p in planned if not p.skip_reason and is_reference(p.spec)
                 and shape_key(p.spec) == key), None)


def paired_speedup(case: CaseSpec, reference: CaseSpec, rounds: int,
                   servers: ForkServers | None = None) -> PairedSpeedup | str:
    """Measure ``case`` against ``reference`` in ``rounds`` interleaved rounds; the result,
    or why it could not be measured. With ``servers``, CPU workers fork from them."""
    ref_medians: list[float] = []
    case_medians: list[float] = []
    for index in range(rounds):
        order = ((reference, ref_medians), (case, case_medians))
        for spec, medians in order if index % 2 == 0 else order[::-1]:
            result = run_isolated(spec, servers=servers)
            if not result.measured or result.timing is None:
                return f"round {index + 1}: {spec.case_id} ended {result.status}: {result.reason}"
            medians.append(result.timing.median_s)
    estimate = paired_ratio(case_medians, ref_medians)
    return PairedSpeedup(reference_case=reference.case_id, rounds=rounds,
                         speedup=estimate.ratio, ci_low=estimate.ci_low,
                         ci_high=estimate.ci_high, p_value=estimate.p_value,
                         reference_medians_s=ref_medians, case_medians_s=case_medians,
                         method=PAIRED_METHOD)
