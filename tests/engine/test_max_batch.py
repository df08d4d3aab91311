"""The max-batch search: exact on a known answer, and under a real memory cap."""

from __future__ import annotations

import math

import pytest

from bench.launch.isolation import run_isolated
from bench.orchestrate.max_batch import Probe, max_batch_for_case, parse_latency_bound, search
from bench.results.schema import CaseResult
from bench.spec.model import Budget, CaseSpec
from tests.builders import ScriptedLauncher


def fits_up_to(limit: int, calls: list[int]):
    def probe(batch: int) -> Probe:
        calls.append(batch)
        return Probe(batch, "ok" if batch <= limit else "oom")
    return probe


@pytest.mark.parametrize("limit", [1, 2, 3, 37, 64, 1000])
def test_search_finds_the_exact_limit_in_logarithmic_probes(limit):
    calls: list[int] = []
    found = search(fits_up_to(limit, calls))
    assert found.max_batch == limit and found.first_oom == limit + 1
    assert len(calls) <= 2 * math.ceil(math.log2(limit + 1)) + 2
    assert len(set(calls)) == len(calls)  # no batch probed twice


def test_search_bisects_below_a_start_that_does_not_fit():
    found = search(fits_up_to(5, []), start=16)
    assert found.max_batch == 5 and found.first_oom == 6


def test_nothing_fits_and_ceiling():
    assert search(fits_up_to(0, [])).max_batch is None
    capped = search(fits_up_to(10**6, []), ceiling=100)
    assert capped.max_batch == 64 and capped.first_oom is None


def test_a_crash_is_not_mistaken_for_a_memory_limit():
    def probe(batch: int) -> Probe:
        return Probe(batch, "ok" if batch < 4 else "crashed", "worker killed by SIGSEGV")
    found = search(probe)
    assert found.max_batch == 2 and found.first_oom is None
    assert found.stopped == "batch 4: crashed: worker killed by SIGSEGV"


def _scripted(statuses: dict[int, list[str]], ms_per_sample: float = 10.0):
    """A worker stand-in: batch b's step p99 is b x ms_per_sample; each run of batch b
    takes the next of statuses[b] (ok when none is left)."""
    from tests.builders import case, trials

    calls: list[int] = []

    def run(spec: CaseSpec) -> CaseResult:
        batch = spec.axes["batch_size"]
        calls.append(batch)
        record = case(spec.case_id, trials(0.01))
        record.timing.latency_s = {"p99": batch * ms_per_sample / 1000}
        left = statuses.get(batch, [])
        record.status = left.pop(0) if left else "ok"
        if record.status == "contended":
            record.reason = "steal 31% (contended above 10%)"
        return record

    return run, calls


SLEEP = CaseSpec("sleep", "infer", {"device": "cpu", "batch_size": 1}, {}, Budget())


def test_a_contended_probe_still_tells_whether_a_batch_fits_in_memory():
    """Memory does not depend on load: contended probes count as fits (before: the search
    stopped at the first contended probe, max_batch None)."""
    run, calls = _scripted({1: ["contended"], 2: ["contended"], 4: ["oom"], 3: ["contended"]})
    found = max_batch_for_case(SLEEP, launcher=ScriptedLauncher(run))
    assert found.max_batch == 3 and found.first_oom == 4 and found.stopped is None
    assert calls == [1, 2, 4, 3]  # each probed once: nothing to retry


def test_a_contended_probe_within_a_latency_bound_fits_and_one_over_it_runs_again():
    """Load only lengthens latency: a contended probe within the bound fits; one over it
    cannot tell and is run again, and its clean run decides."""
    bound = parse_latency_bound("p99_ms=45")
    run, calls = _scripted({2: ["contended"], 8: ["contended", "contended"],
                            4: ["contended"], 6: ["contended"], 5: ["contended"]})
    found = max_batch_for_case(SLEEP, launcher=ScriptedLauncher(run), latency=bound)
    assert found.max_batch == 4 and found.first_over_latency == 5, found.probes
    assert calls == [1, 2, 4, 8, 8, 8, 6, 6, 5, 5]


def test_a_probe_contended_over_the_bound_every_time_ends_the_search_undecided():
    bound = parse_latency_bound("p99_ms=45")
    run, calls = _scripted({8: ["contended"] * 3})
    found = max_batch_for_case(SLEEP, launcher=ScriptedLauncher(run), latency=bound)
    assert calls == [1, 2, 4, 8, 8, 8] and found.max_batch == 4
    assert found.first_over_latency is None
    assert found.stopped.startswith("batch 8: contended: p99 80 ms > 45 ms, but timed under "
                                    "contention (steal 31%")


@pytest.mark.slow
@pytest.mark.heavy  # five real workers (about 19 s); the search itself is tested on scripts
def test_real_workers_under_a_memory_cap_find_the_known_limit():
    mib_per_sample = 512
    quick = Budget(min_trials=3, max_trials=3, max_time_s=0.5, trial_time_s=0.01,
                   warmup_max_s=0.1, timeout_s=60)
    # What a worker holds besides the ballast (interpreter, torch): measured, not assumed.
    memory = run_isolated(CaseSpec("ballast", "infer", {"device": "cpu", "batch_size": 1},
                                   {"mib_per_sample": 1}, quick)).memory
    base = memory.peak_rss_mib
    cap = base + 2.5 * mib_per_sample  # 2 samples fit, 3 do not (the watchdog reads RSS)
    case = CaseSpec("ballast", "infer", {"device": "cpu", "batch_size": 1},
                    {"mib_per_sample": mib_per_sample},
                    Budget(**{**quick.to_dict(), "memory_limit_mib": cap}))
    found = max_batch_for_case(case)
    assert found.max_batch == 2, found.probes
    assert found.first_oom == 3
    assert [p.status for p in found.probes] == ["ok", "ok", "oom", "oom"]
    # The probe reports MemoryResult.peak(): the anonymous RSS, which holds the ballast.
    assert found.at_max.peak_mib > memory.peak()[0] + 2 * mib_per_sample * 0.9
