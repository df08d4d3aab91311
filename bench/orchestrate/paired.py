"""Speed-ups between variants of one run that can be trusted.

Two cases of one sweep run minutes apart in different worker processes, and on a shared
machine that alone moves a figure by more than many variant differences (the same minilm
configuration read 78.1, 80.1 and 91.3 sentences/s within one committed run). So a
variant's speed-up over its parity reference (the case of the same benchmark and shape with
every variant axis at its default: fp32, eager, unquantized, unpruned) is measured the way
``bench ab`` measures two commits: ``rounds`` rounds, each running the reference and the
variant in fresh worker processes back to back (order alternating, ABBA), each round's
ratio of medians one paired sample, and a t-based 95% CI on their log mean
(bench.measurement.stats.paired_ratio). The rounds are the A/B's round runner's
(bench.orchestrate.rounds), so a round timed under contention is left out and replaced here as
there. The record keeps every kept round's medians.

Identical configurations (the same workload, phase, axes, params and budget under two
benchmark labels) are measured once; the later cases share that measurement
(``shared_measurement``).
"""

from __future__ import annotations

import copy
import dataclasses

from bench.launch.launcher import Launcher
from bench.measurement.stats import paired_ratio
from bench.orchestrate.plan import PlannedCase
from bench.orchestrate.rounds import Arm, Comparison, RoundRunner, Stopping
from bench.results.schema import AccuracyResult, CaseResult, PairedSpeedup
from bench.spec.model import CaseSpec, is_reference, shape_key

PAIRED_METHOD = ("rounds of (reference, case) in fresh worker processes back to back, order "
                 "alternating, a round timed under contention left out and run again; per "
                 "round median(reference) / median(case); geometric mean with a t-based 95% "
                 "CI on the log ratios")


def shared_measurement(original: CaseResult, spec: CaseSpec) -> CaseResult:
    """``original``'s measurement recorded for ``spec``, an identical configuration under
    another benchmark: its own id, label, parity reference and accuracy targets."""
    shared = dataclasses.replace(copy.deepcopy(original), **spec.identity.fields())
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
                   launcher: Launcher) -> PairedSpeedup | str:
    """Measure ``case`` against ``reference`` in ``rounds`` interleaved rounds; the result,
    or why it could not be measured. Workers start through ``launcher``."""
    comparison = Comparison(case.case_id, [Arm("reference", reference, launcher),
                                           Arm("case", case, launcher)])
    RoundRunner(Stopping.fixed(rounds), fresh_servers=False).run([comparison])
    if (failed := comparison.failure()) is not None:
        return f"{failed.case_id} ended {failed.status}: {failed.reason}"
    ref_medians, case_medians = comparison.medians()
    left_out = len(comparison.left_out[0])
    contended = len(case_medians) < 2
    if contended:  # as in bench ab, contended rounds stand when too few clean ones remain
        ref_medians, case_medians = ([r.timing.median_s for r in per_arm]
                                     for per_arm in comparison.left_out)
    estimate = paired_ratio(case_medians, ref_medians)
    return PairedSpeedup(reference_case=reference.case_id, rounds=len(case_medians),
                         speedup=estimate.ratio, ci_low=estimate.ci_low,
                         ci_high=estimate.ci_high, p_value=estimate.p_value,
                         reference_medians_s=ref_medians, case_medians_s=case_medians,
                         method=PAIRED_METHOD, left_out=left_out, contended=contended)
