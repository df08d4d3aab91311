"""Generate: greedy generate calls, each token's time noted as it reaches the host (the
generate phase, bench.workloads._generate), then the figures of
bench.measurement.generation and the phase's quality metrics.

A case makes one cold call (compilation, the cache's first allocation: kept apart), one
warm-up call, then timed calls until the budget's stopping rule holds for the time per
output token: at least ``min_trials`` calls, then until the 95% CI of the median TPOT is
within ``target_rel_ci`` or ``max_trials`` / ``max_time_s`` is reached. The record's
``timing`` is the decode step (a trial is a call: its samples every gap between its tokens,
its mean the call's TPOT), so throughput is decode tokens/s and the gate, ``bench compare``
and ``bench ab`` judge it as any step time; ``generation`` holds the rest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench.measurement.generation import generation_figures
from bench.measurement.stats import percentiles, summarize
from bench.modes import register
from bench.modes.base import TimedMode
from bench.modes.record import record_outcome, record_timing
from bench.results.schema import GenerationResult, TimingResult
from bench.spec.model import CLOSED_LOOP
from bench.workloads._generate import PHASE
from bench.workloads.base import Outcome

if TYPE_CHECKING:
    from bench.measurement.generation import GenerationCall
    from bench.modes.trackers import Trackers
    from bench.results.schema import CaseResult
    from bench.spec.model import CaseSpec

WARMUP_CALLS = 1


def _per_step(call: GenerationCall) -> list[float]:
    """A call's step samples: every gap between its tokens (its TTFT for one token)."""
    return call.inter_token_s or [call.ttft_s]


def enough_calls(calls: list[GenerationCall], case: CaseSpec, elapsed_s: float) -> bool:
    """The budget's stopping rule over the calls' TPOT (TTFT for one-token outputs)."""
    budget = case.budget
    if len(calls) >= budget.max_trials:
        return True
    if len(calls) < budget.min_trials:
        return False
    if elapsed_s >= budget.max_time_s:
        return True
    summary = summarize([sum(_per_step(c)) / len(_per_step(c)) for c in calls])
    return (summary.ci_high - summary.ci_low) / 2 <= budget.target_rel_ci * summary.median


def generation_timing(cold: GenerationCall, calls: list[GenerationCall],
                      step_description: str, stop_reason: str) -> TimingResult:
    trials = [_per_step(c) for c in calls]
    means = [sum(t) / len(t) for t in trials]
    one_token = cold.output_tokens < 2
    return TimingResult(
        timer="perf_counter", timer_description="time.perf_counter at each new token's "
        "arrival on the host (a generate streamer's put)",
        step_description=step_description, cold_start_s=_per_step(cold)[0],
        warmup_iterations=WARMUP_CALLS, warmup_steady=True, warmup_s=0.0,
        iters_per_trial=len(trials[0]), trial_samples_s=trials, trial_means_s=means,
        latency_s=percentiles([d for t in trials for d in t]),
        stop_reason=stop_reason,
        statistic=("median over calls of the call's TTFT" if one_token else
                   "median over calls of the call's TPOT, (end-to-end - TTFT) / (output "
                   "tokens - 1)"),
        **TimingResult.summary_fields(summarize(means)))


@register
class Generate(TimedMode):
    name = "generate"
    description = "greedy generate calls timed per token (the generate phase)"
    order = 35

    @classmethod
    def claims(cls, case: CaseSpec) -> bool:
        # A served generate case (a LoadGen scenario) is the served mode's.
        return case.phase == PHASE and case.scenario == CLOSED_LOOP

    def timed(self, case: CaseSpec, phase: Any, result: CaseResult,
              trackers: Trackers) -> int | None:
        with phase.session():
            cold = phase.call()
            for _ in range(WARMUP_CALLS):
                phase.call()
            calls: list[GenerationCall] = []
            started = time.perf_counter()
            while not enough_calls(calls, case, time.perf_counter() - started):
                calls.append(phase.call())
        stop = "max_trials" if len(calls) >= case.budget.max_trials else "budget"
        figures = generation_figures(calls)
        result.generation = GenerationResult(
            batch=phase.batch, input_tokens=phase.input_tokens,
            output_tokens=phase.output_tokens, calls=figures.calls, ttft_s=figures.ttft_s,
            tpot_s=figures.tpot_s, itl_s=figures.itl_s, end_to_end_s=figures.end_to_end_s,
            prefill_tokens_per_s=figures.prefill_tokens_per_s,
            decode_tokens_per_s=figures.decode_tokens_per_s,
            token_times_s=[[t - c.start_s for t in c.token_times_s] for c in calls],
            cold_token_times_s=[t - cold.start_s for t in cold.token_times_s],
            warmup_calls=WARMUP_CALLS, weights_bytes=phase.weights_bytes,
            kv_cache_computed_bytes=phase.kv_cache_computed_bytes,
            kv_cache_measured_bytes=phase.kv_cache_measured_bytes, kv_cache=phase.kv_cache,
            missing=figures.missing, definitions=figures.definitions,
            method=phase.step_description)
        record_timing(result, generation_timing(cold, calls, phase.step_description, stop),
                      phase.batch, phase.sample_unit)
        return len(calls) * phase.batch * phase.output_tokens

    def finish(self, case: CaseSpec, phase: Any, result: CaseResult) -> None:
        record_outcome(case, Outcome(metrics={}) if case.probe else phase.finish(), result)
