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


GENERATE = CaseSpec("smollm2", "generate", {"device": "cpu", "batch_size": 1,
                                            "input_tokens": 512, "output_tokens": 16}, {},
                    Budget())


def _scripted_generation(ms_per_sample: float, kv_mib_per_sample: float, oom_from: int):
    """A generate worker stand-in: TPOT p50 = batch x ms_per_sample, TTFT ten times that;
    the KV cache batch x kv_mib_per_sample; out of memory from ``oom_from``."""
    from bench.results.schema import GenerationResult
    from tests.builders import case, trials

    calls: list[int] = []

    def run(spec: CaseSpec) -> CaseResult:
        batch = spec.axes["batch_size"]
        calls.append(batch)
        record = case(spec.case_id, trials(0.01))
        record.timing.latency_s = {"p50": 0.001, "p99": 0.001}  # the step: never the bound
        tpot = batch * ms_per_sample / 1000
        record.generation = GenerationResult(
            batch=batch, input_tokens=512, output_tokens=16, calls=3,
            ttft_s={"p50": 10 * tpot, "p90": 10 * tpot, "p99": 10 * tpot},
            tpot_s={"p50": tpot, "p90": tpot, "p99": tpot}, itl_s=None,
            end_to_end_s={"p50": 1.0}, prefill_tokens_per_s=1.0, decode_tokens_per_s=1.0,
            token_times_s=[], cold_token_times_s=[], warmup_calls=1, weights_bytes=1,
            kv_cache_computed_bytes=int(batch * kv_mib_per_sample * 2**20),
            kv_cache_measured_bytes=None, kv_cache="dynamic")
        record.status = "oom" if batch >= oom_from else "ok"
        return record

    return run, calls


@pytest.mark.parametrize("text, figure, percentile", [("tpot_p50_ms=60", "tpot", "p50"),
                                                      ("ttft_p99_ms=500", "ttft", "p99"),
                                                      ("p90_ms=5", "step", "p90")])
def test_a_generation_bound_names_its_figure(text, figure, percentile):
    bound = parse_latency_bound(text)
    assert (bound.figure, bound.percentile, str(bound)) == (figure, percentile, text)


def test_a_tpot_bound_or_the_memory_cap_decides_whichever_is_tighter():
    """TPOT 10 ms a sequence: a 45 ms bound stops at 4 when memory allows 8; a 100 ms
    bound lets memory decide (out of memory from 7). The step latency never decides."""
    run, _ = _scripted_generation(10.0, 46.0, oom_from=9)
    found = max_batch_for_case(GENERATE, launcher=ScriptedLauncher(run),
                               latency=parse_latency_bound("tpot_p50_ms=45"))
    assert found.max_batch == 4 and found.first_over_latency == 5 and found.first_oom is None
    assert found.at_max.latency_ms == pytest.approx(40.0)
    assert found.at_max.kv_cache_mib == pytest.approx(4 * 46.0, rel=1e-6)
    assert found.latency_bound == "tpot_p50_ms=45"
    run, _ = _scripted_generation(10.0, 46.0, oom_from=7)
    found = max_batch_for_case(GENERATE, launcher=ScriptedLauncher(run),
                               latency=parse_latency_bound("tpot_p50_ms=100"))
    assert found.max_batch == 6 and found.first_oom == 7 and found.first_over_latency is None
    run, _ = _scripted_generation(10.0, 46.0, oom_from=99)
    found = max_batch_for_case(GENERATE, launcher=ScriptedLauncher(run),
                               latency=parse_latency_bound("ttft_p99_ms=250"))
    assert found.max_batch == 2 and found.first_over_latency == 3  # TTFT 10x the TPOT


def test_a_generation_bound_on_a_case_that_does_not_generate_is_an_error():
    run, _ = _scripted({})
    found = max_batch_for_case(SLEEP, launcher=ScriptedLauncher(run),
                               latency=parse_latency_bound("tpot_p50_ms=45"))
    assert found.max_batch is None and "no TPOT p50 latency recorded" in found.stopped


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


def test_the_cli_refuses_a_tpot_bound_for_a_suite_that_does_not_generate(write_suite, capsys):
    from bench.cli import main
    from tests.builders import sleep_suite

    path = write_suite(sleep_suite("sleepy", 1))
    assert main(["max-batch", str(path), "--latency", "tpot_p50_ms=40"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not generate text" in err and "\n" not in err
