"""What tests build: result records (for the gate, reports and comparisons), cases of a
workload at its declared defaults, and suite text with the budgets tests share. One module,
imported as ``tests.builders``; no test module is imported as a helper."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.launch.launcher import Launcher
from bench.measurement.stats import summarize
from bench.results.schema import (
    AccuracyResult,
    CaseResult,
    MemoryResult,
    RunInfo,
    RunRecord,
    TimingResult,
)
from bench.results.store import json_safe
from bench.spec.model import Budget, CaseSpec

REPO = Path(__file__).resolve().parents[1]

# --- records ---------------------------------------------------------------------------

FINGERPRINT = {"cpu": {"model": "Test CPU", "logical_cores": 2},
               "packages": {"torch": "2.13.0"}, "threads": {"torch_intraop": 2}}


def trials(median_s: float, n: int = 20, noise: float = 0.01, seed: int = 0) -> list[float]:
    """``n`` seeded samples around ``median_s`` with a relative spread of ``noise``."""
    rng = np.random.default_rng(seed)
    return list(median_s * (1 + noise * rng.standard_normal(n)))


def case(case_id: str, times: list[float] | None, rss: float = 500.0, accuracy: float = 0.9,
         status: str = "ok") -> CaseResult:
    """A case record timed at ``times`` (one sample per trial), with memory and accuracy."""
    timing = None
    if times is not None:
        s = summarize(times)
        timing = TimingResult(
            timer="perf_counter_ns", timer_description="", step_description="",
            cold_start_s=s.median, warmup_iterations=3, warmup_steady=True, warmup_s=0.1,
            iters_per_trial=1, trial_samples_s=[[t] for t in times], trial_means_s=times,
            median_s=s.median, mean_s=s.mean, std_s=s.std, cv=s.cv, ci_low_s=s.ci_low,
            ci_high_s=s.ci_high, ci_level=0.95, ci_method=s.ci_method, latency_s={},
            stop_reason="test")
    return CaseResult(
        case_id=case_id, workload="w", phase="infer", axes={}, params={}, status=status,
        reason=None if status == "ok" else "RuntimeError: boom", timing=timing,
        memory=MemoryResult(100.0, rss, rss, None, None, None, 0.01, 10, "test"),
        accuracy=AccuracyResult({"acc": accuracy}, [], None, task_metric="acc",
                                higher_is_better=True))


def run(*cases: CaseResult, fingerprint: dict | None = None) -> RunRecord:
    return RunRecord(RunInfo("r", "s", "s.toml", "0", "now", []),
                     fingerprint or FINGERPRINT, list(cases))


def write(path: Path, record: RunRecord) -> str:
    path.write_text(json.dumps(json_safe(record.to_dict())))
    return str(path)


# --- cases -----------------------------------------------------------------------------

# A few short trials: tests of isolation and faults, not of figures.
FAULT_BUDGET = Budget(min_trials=3, max_trials=5, max_time_s=0.5, trial_time_s=0.01,
                      warmup_max_s=0.1, timeout_s=60)


def workload_case(workload: str, phase: str = "train", axes: dict[str, Any] | None = None,
                  params: dict[str, Any] | None = None, budget: Budget | None = None,
                  **fields: Any) -> CaseSpec:
    """A case of ``workload`` as the loader fills it: every axis of the phase and every
    parameter it takes at its declared default, unless given."""
    from bench.workloads import get_workload  # the registry imports torch: on use

    w = get_workload(workload)
    full_axes = {k: s.default for k, s in w.phase_axes(phase).items()} | (axes or {})
    full_params = {k: s.default for k, s in w.params().items()
                   if s.phases is None or phase in s.phases} | (params or {})
    return CaseSpec(workload, phase, full_axes, full_params, budget or Budget(), **fields)


def fault_case(fault: str, **budget: Any) -> CaseSpec:
    """A case of the fault workload that injects ``fault`` after two steps."""
    return CaseSpec("fault", "infer", {"device": "cpu", "fault": fault},
                    {"after_steps": 2, "chunk_mib": 64},
                    Budget(**{**FAULT_BUDGET.to_dict(), **budget}))


# --- suite text ------------------------------------------------------------------------

# A budget of the fewest trials a verdict needs and almost no time: tests of the engine's
# plumbing (sharding, merging, executors), not of its figures.
QUICK_BUDGET = """\
[budget]
min_trials = 4
max_trials = 4
max_time_s = 0.2
trial_time_s = 0.005
warmup_max_s = 0.01
timeout_s = 60
"""

# A few short trials of a real workload in a real worker: tests of A/B rounds that time
# something, not of how precisely.
ROUND_BUDGET = ('[budget]\nmin_trials = 4\nmax_trials = 4\ntrial_time_s = 0.01\n'
                'warmup_max_s = 0.05\nmax_time_s = 0.3\ntimeout_s = 120\n')


def budget_text(**settings: Any) -> str:
    """A ``[budget]`` table of ``settings`` (TOML values)."""
    return "[budget]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())


def benchmark_text(workload: str, phase: str = "infer", label: str | None = None,
                   **tables: str) -> str:
    """A ``[[benchmark]]`` table; ``tables`` are inline TOML, e.g. params="{ sleep_ms = 5 }"."""
    head = f'label = "{label}"\n' if label else ""
    return (f'[[benchmark]]\n{head}workload = "{workload}"\nphase = "{phase}"\n'
            + "".join(f"{k} = {v}\n" for k, v in tables.items()))


def suite_text(*benchmarks: str, name: str | None = None, budget: str = "") -> str:
    """A suite file's text: its name (if any), a budget table and the benchmarks."""
    return (f'[suite]\nname = "{name}"\n' if name else "") + budget + "".join(benchmarks)


def sleep_suite(name: str, cases: int) -> str:
    """A suite of ``cases`` sleep benchmarks labelled s1.. (0.1, 0.2, ... ms per step)."""
    return f'[suite]\nname = "{name}"\n' + QUICK_BUDGET + "".join(
        benchmark_text("sleep", label=f"s{i}", params=f"{{ sleep_ms = 0.{i} }}")
        for i in range(1, cases + 1))


# --- launchers -------------------------------------------------------------------------

class ScriptedLauncher(Launcher):
    """A launcher whose workers are a function of the case: scripted records, no process
    (for what orchestrates cases: the sweep's loop, rounds, the max-batch search)."""

    name = "scripted"

    def __init__(self, worker: Callable[[CaseSpec], CaseResult]) -> None:
        self.worker = worker

    def run_once(self, case: CaseSpec, run_env: Mapping[str, str] | None = None,
                 timeout_scale: float = 1.0) -> CaseResult:
        return self.worker(case)

    def run_case(self, case: CaseSpec) -> CaseResult:
        return self.worker(case)
