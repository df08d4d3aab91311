"""A mode is one class found through a registry. A toy mode in one temporary
module runs a case end to end through ``bench run`` with no other file edited, inside the
same trackers as every timed mode; the built-in modes claim cases by their shape; the
ranks' tracked figures combine into the case's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.errors import BenchInputError
from bench.modes import get_mode, mode_for, mode_names
from bench.modes.trackers import TrackedFigures, combine_ranks
from bench.results.schema import ClockResult, EnergyResult, InterferenceResult
from bench.spec import load_suite
from bench.spec.expand import expand_suite
from tests.builders import REPO

TOY = '''
import time
from bench.modes import register
from bench.modes.base import TimedMode
from bench.modes.record import record_outcome, record_timing, sampled_timing
from bench.measurement.sampler import measure
from bench.measurement.timers import timer_for


@register
class TenStepsTwice(TimedMode):
    """A toy: the engine's sampler, then the phase's metrics; one module, nothing else."""
    name = "toy_mode"
    description = "a toy mode for a test"

    def timed(self, case, phase, result, trackers):
        with phase.session():
            measurement = measure(phase.step, timer_for(case.device), case.budget)
        result.details["toy_mode_ran"] = True
        record_timing(result, sampled_timing(measurement, "toy: " + phase.step_description),
                      phase.samples_per_step, phase.sample_unit)
        return measurement.steps_run * phase.samples_per_step

    def finish(self, case, phase, result):
        record_outcome(case, phase.finish(), result)
'''
TOY_DIST = "Metadata-Version: 2.1\nName: toy-bench-mode\nVersion: 0.1\n"
SUITE = """
[suite]
name = "toy"
[budget]
min_trials = 4
max_trials = 4
max_time_s = 1
trial_time_s = 0.01
warmup_max_s = 0.05
timeout_s = 120
[[benchmark]]
workload = "linreg"
phase = "train"
mode = "{mode}"
matrix = {{ device = ["cpu"] }}
"""


@pytest.fixture
def toy_mode_dir(tmp_path):
    """The toy module and a distribution whose entry point (group bench.modes) names it,
    as `pip install` of a plugin would leave them."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "toy_mode_module.py").write_text(TOY)
    info = plugin / "toy_bench_mode-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(TOY_DIST)
    (info / "entry_points.txt").write_text("[bench.modes]\ntoy = toy_mode_module\n")
    return plugin


@pytest.mark.slow
def test_a_toy_mode_in_one_module_runs_a_case_through_bench_run(toy_mode_dir, write_suite,
                                                                  tmp_path):
    suite = write_suite(SUITE.format(mode="toy_mode"))
    out = tmp_path / "toy.json"
    env = {**os.environ, "PYTHONPATH": str(toy_mode_dir)}
    done = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--out", str(out),
                           "--quiet"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode in (0, 1), done.stderr
    (case,) = json.loads(out.read_text())["cases"]
    assert case["status"] in ("ok", "contended"), case["reason"]
    assert case["worker"]["mode"] == "toy_mode" and case["details"]["toy_mode_ran"]
    assert case["timing"]["step_description"].startswith("toy: ")
    assert case["throughput"]["value"] > 0 and case["accuracy"]["metrics"]
    # The trackers came with TimedMode: the toy wrote none of these.
    assert case["interference"] is not None and case["clocks"]["samples"] >= 0
    assert case["energy"]["measured"] or case["energy"]["reason"]


def test_an_unknown_mode_is_one_line_naming_the_valid_ones(write_suite):
    with pytest.raises(BenchInputError) as caught:
        load_suite(write_suite(SUITE.format(mode="no_such_mode")))
    text = caught.value.one_line()
    assert "benchmark[0].mode" in text and "closed_loop" in text and "\n" not in text


@pytest.mark.parametrize("workload, extra, mode", [
    ("linreg", "", "closed_loop"),
    ("digits_cnn", "target = { val_accuracy = 0.5 }\ntraining = { seeds = 3 }",
     "train_to_target"),
    ("digits_cnn", 'params = { parallel = "ddp", world_size = 2 }', "across_ranks"),
])
def test_the_built_in_modes_claim_cases_by_their_shape(write_suite, workload, extra, mode):
    text = SUITE.replace('mode = "{mode}"\n', extra + "\n").replace("{{", "{") \
        .replace("}}", "}").replace('"linreg"', f'"{workload}"')
    case = expand_suite(load_suite(write_suite(text)))[0]
    assert mode_for(case).name == mode and case.mode is None


def test_a_named_mode_is_what_the_case_runs(write_suite):
    (case,) = expand_suite(load_suite(write_suite(SUITE.format(mode="closed_loop"))))
    assert case.mode == "closed_loop" and mode_for(case) is get_mode("closed_loop")
    assert {"closed_loop", "served", "train_to_target", "count_instructions",
            "across_ranks"} <= set(mode_names())


def test_a_named_mode_that_cannot_run_a_case_skips_it_with_the_reason(write_suite):
    from bench.orchestrate.plan import plan_suite

    (planned,) = plan_suite(load_suite(write_suite(SUITE.format(mode="train_to_target"))))
    assert planned.skip_reason.startswith("mode train_to_target does not run this case")


def _figures(others: float, contended: bool, joules: dict[str, float] | None,
             throttled: bool = False) -> TrackedFigures:
    seen = InterferenceResult(wall_s=1.0, cores=2, own_cpu_s=1.0, others_cpu_s=others * 2,
                              others_share=others, steal_share=0.0, own_cpu_per_thread=0.5,
                              threads=2, contended=contended, threshold=0.1, method="m")
    energy = (EnergyResult(measured=True, method="rapl", seconds=1.0, joules=sum(joules.values()),
                           domains=joules, resolution="r") if joules is not None else
              EnergyResult(measured=False, method="rapl", seconds=1.0, reason="no RAPL here"))
    clocks = ClockResult(samples=3, interval_s=0.1, throttled=throttled, method="m",
                         throttle_reasons=["cpu clock dropped"] if throttled else [])
    return TrackedFigures(seen, energy, clocks, "busy neighbour" if contended else None)


def test_ranks_on_one_host_count_their_shared_package_once_and_gpus_each():
    package = {"rapl:intel-rapl:0:package-0": 30.0}
    cpu = combine_ranks(["a", "a"], [_figures(0, False, package), _figures(0, False, package)],
                        samples=600)
    assert cpu.energy.joules == 30.0 and cpu.energy.joules_per_sample == pytest.approx(0.05)
    gpus = combine_ranks(["a", "a", "b"], [_figures(0, False, {"nvml:gpu0": 10.0}),
                                           _figures(0, False, {"nvml:gpu1": 12.0}),
                                           _figures(0, False, {"nvml:gpu0": 11.0})], 300)
    assert gpus.energy.joules == 33.0 and len(gpus.energy.domains) == 3


def test_a_rank_without_counters_leaves_the_case_unmeasured_with_its_reason():
    mixed = combine_ranks(["a", "b"], [_figures(0, False, {"nvml:gpu0": 1.0}),
                                       _figures(0, False, None)], 100)
    assert not mixed.energy.measured and mixed.energy.reason == "rank 1: no RAPL here"


def test_one_contended_rank_makes_the_case_contended_and_is_named():
    figures = combine_ranks(["a", "a"], [_figures(0.01, False, None),
                                         _figures(0.4, True, None, throttled=True)], 10)
    assert figures.contention == "rank 1: busy neighbour"
    assert figures.interference.others_share == 0.4
    assert figures.clocks.throttled and "rank 1: cpu clock dropped" in \
        figures.clocks.throttle_reasons


def test_the_worker_module_brings_every_built_in_mode_so_forked_workers_inherit_them():
    """A fork server preloads bench.runners.worker: a mode imported only on first use would
    be imported again in every forked worker (the ranks mode's elastic launcher: 0.1 s)."""
    code = ("import json, sys, bench.runners.worker; print(json.dumps(sorted(m for m in "
            "sys.modules if m.startswith('bench.modes.'))))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    loaded = set(json.loads(out.stdout))
    assert {f"bench.modes.{m}" for m in ("closed_loop", "served", "to_target", "instructions",
                                         "ranks")} <= loaded


def test_a_benchmark_that_names_a_mode_is_not_shared_with_one_that_does_not(write_suite):
    from bench.results.schema import CaseResult
    from bench.spec.model import measurement_key

    linreg = 'workload = "linreg"\nphase = "train"\nmatrix = { device = ["cpu"] }\n'
    named, plain = expand_suite(load_suite(write_suite(
        f'[[benchmark]]\nlabel = "named"\nmode = "closed_loop"\n{linreg}'
        f'[[benchmark]]\nlabel = "plain"\n{linreg}')))
    assert measurement_key(named) != measurement_key(plain)
    # The record carries the named mode, so a resumed sweep finds the same key.
    assert measurement_key(CaseResult.for_case(named, "ok")) == measurement_key(named)
    assert CaseResult.for_case(plain, "ok").mode is None
