"""Instruction counts (bench.measurement.instructions): read from callgrind's output, into
the record by the parent, compared and gated beside wall time."""

from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.launch.isolation import _add_instruction_count, run_isolated
from bench.measurement import instructions
from bench.orchestrate.plan import plan_suite
from bench.reports.compare import compare_runs
from bench.reports.gate import Policy, evaluate, markdown
from bench.results.schema import InstructionCount
from bench.spec import load_suite
from tests.builders import benchmark_text, budget_text, case, run, suite_text, trials

CALLGRIND_OUT = """# callgrind format
version: 1
creator: callgrind-3.19.0
cmd:  python -P -m bench.runners.worker
events: Ir
fn=(1) main
0 5
summary: 159076120
totals: 159076120
"""


def test_the_total_is_read_from_callgrinds_output(tmp_path):
    out = tmp_path / "callgrind.out"
    out.write_text(CALLGRIND_OUT)
    assert instructions.read_total(out) == 159076120
    out.write_text("events: Ir\n")
    assert instructions.read_total(out) is None
    assert instructions.read_total(tmp_path / "missing") is None


def test_the_parent_records_per_step_counts_or_says_why_not(tmp_path):
    out = tmp_path / "callgrind.out"
    out.write_text(CALLGRIND_OUT)
    counted = case("a", trials(0.1))
    counted.instructions = InstructionCount(steps=10)
    _add_instruction_count(counted, out)
    assert counted.instructions.per_step == pytest.approx(15907612.0)
    assert "callgrind" in counted.instructions.method
    old_worker = case("a", trials(0.1))  # a bench that does not count: no steps recorded
    _add_instruction_count(old_worker, out)
    assert old_worker.status == "error" and "does not count instructions" in old_worker.reason


def test_a_worker_started_uninstrumented_switches_it_on_or_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(instructions, "_control", lambda: "/usr/bin/callgrind_control")
    prefix = instructions.command_prefix(tmp_path / "out")
    assert "--instr-atstart=no" in prefix
    assert instructions.worker_env(prefix) == {instructions.DEFERRED_ENV: "1"}
    monkeypatch.setattr(instructions, "_control", lambda: None)
    prefix = instructions.command_prefix(tmp_path / "out")
    assert "--instr-atstart=no" not in prefix and instructions.worker_env(prefix) == {}
    # Not under valgrind, nothing deferred: nothing to do.
    monkeypatch.delenv(instructions.DEFERRED_ENV, raising=False)
    instructions.start_instrumentation()
    # Deferred but no callgrind_control: counting uninstrumented steps would read zero.
    monkeypatch.setenv(instructions.DEFERRED_ENV, "1")
    with pytest.raises(RuntimeError, match="not installed"):
        instructions.start_instrumentation()


def counted_run(per_step: float | None):
    record = run(case("a", trials(0.1)))
    if per_step is not None:
        record.cases[0].instructions = InstructionCount(10, per_step)
    return record


def test_counts_are_reported_and_gated_only_when_the_policy_asks():
    comparisons = compare_runs(counted_run(15_907_612), counted_run(16_131_065))
    assert comparisons[0].instructions_ratio == pytest.approx(1.01405, rel=1e-4)
    reported = evaluate(comparisons, Policy())
    assert reported.exit_code == 0 and reported.instructions["a"] == pytest.approx(1.01405,
                                                                                  rel=1e-4)
    assert "Instructions per step" in markdown(reported, "b", "c", Policy())
    gated = evaluate(comparisons, Policy(gate_instructions=True))
    assert gated.exit_code == 1 and gated.regressions[0].check == "instructions"
    lost = evaluate(compare_runs(counted_run(15_907_612), counted_run(None)),
                    Policy(gate_instructions=True))
    assert lost.exit_code == 1 and "current run's not" in lost.regressions[0].text


COUNT_SUITE = suite_text(
    benchmark_text("linreg", "train", params="{ epochs = 1 }",
                   matrix='{ device = ["cpu"], method = ["minibatch"], batch_size = [16, 256] }'),
    name="instructions", budget=budget_text(min_trials=4, max_trials=4, trial_time_s=0.01,
                                            timeout_s=600))


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_a_steps_instruction_count_follows_its_work(write_suite):
    """linreg's mini-batch step at batch 16 and 256 (about a minute each under valgrind):
    each count is recorded, no timing is, and 16x the batch counts clearly more."""
    small, large = (dataclasses.replace(p.spec, count_instructions=True, probe=True)
                    for p in plan_suite(load_suite(write_suite(COUNT_SUITE))))
    # Both counts at once, one per core: instructions do not depend on what else runs (the
    # suite's time limit does).
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run_isolated, (small, large)))
    for result in results:
        assert result.measured, (result.status, result.reason, result.stderr_tail)
        assert result.timing is None and result.instructions.per_step > 0
        assert result.worker["started"].startswith("spawned")
    # Measured at one thread: 741,198 and 812,110 per step (mostly dispatch overhead; the
    # same two at two threads, 746,771 and 1,111,377, counted OpenMP's spinning).
    assert results[1].instructions.per_step > 1.05 * results[0].instructions.per_step
