"""LoadGen scenarios (bench.measurement.serving) on the sleep workload, whose service time
is known; the capacity search; the latency-bounded max-batch search; energy and clocks."""

from __future__ import annotations

import math
import statistics
import time

import pytest

from bench.errors import BenchInputError
from bench.launch.isolation import run_isolated
from bench.measurement.clocks import ClockSampler
from bench.measurement.energy import EnergyMeter
from bench.measurement.serving import find_capacity
from bench.orchestrate.max_batch import max_batch_for_case, parse_latency_bound
from bench.results.schema import LoadGenRun, check_case
from bench.spec import load_suite
from bench.spec.expand import expand_suite
from bench.spec.model import Budget, CaseSpec, ServingSpec
from bench.typed import SchemaError

QUICK = Budget(min_trials=4, max_trials=4, max_time_s=0.5, trial_time_s=0.01,
               warmup_max_s=0.1, timeout_s=120)


def served(scenario: str, sleep_ms: float, batch: int = 1, **serving) -> CaseSpec:
    spec = ServingSpec(**{"min_duration_s": 1.0, "min_queries": 64, **serving})
    return CaseSpec("sleep", "infer", {"device": "cpu", "batch_size": batch,
                                       "scenario": scenario},
                    {"sleep_ms": sleep_ms, "per_sample_ms": 0.0}, QUICK, serving=spec)


def md1_wait_cdf(t: float, rate: float, service: float) -> float:
    """P(wait <= t) in an M/D/1 queue (Erlang's formula): Poisson arrivals at ``rate``, one
    server of constant ``service`` time."""
    rho = rate * service
    if rho >= 1 or t < 0:
        return 0.0
    total = 0.0
    for k in range(int(t // service) + 1):
        x = rate * (k * service - t)
        total += x ** k / math.factorial(k) * math.exp(-x)
    return (1 - rho) * total


def md1_capacity(service: float, bound: float, q: float = 0.99) -> float:
    """The highest arrival rate whose q-quantile of wait + service stays within ``bound``."""
    low, high = 0.0, 1 / service
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if md1_wait_cdf(bound - service, mid, service) >= q \
            else (low, mid)
    return low


def test_the_md1_reference_is_right():
    # Light load: almost nobody waits; P(W=0) = 1 - rho exactly.
    assert md1_wait_cdf(0.0, 10.0, 0.01) == pytest.approx(0.9)
    # Against a simulated M/D/1 queue at rho = 0.5 (200,000 arrivals): 0.643, 0.825, 0.947.
    for wait, simulated in ((0.005, 0.643), (0.01, 0.825), (0.02, 0.947)):
        assert md1_wait_cdf(wait, 50.0, 0.01) == pytest.approx(simulated, abs=0.005)
    assert 0.4 < md1_capacity(0.005, 0.02) * 0.005 < 0.5  # ~46% utilisation at 4x service


def test_single_stream_p50_is_the_known_service_time():
    result = run_isolated(served("single_stream", sleep_ms=10.0))
    # measured: ok, or contended (the host stole CPU meanwhile: figures kept, as here)
    assert result.measured, result.reason
    run = result.serving.headline_run
    assert run.meets_bound and run.queries >= 64 and run.mean_batch == 1.0
    # Sanity bounds: a 10 ms service is never quicker; on a loaded host it may wake late.
    assert 10.0 <= run.latency_ms["p50"] <= 2 * 10.0 + 5
    assert run.latency_ms["p50"] <= run.latency_ms["p90"] <= run.latency_ms["p99"]
    assert 0.010 <= statistics.median(result.serving.latency_samples_s) <= 2 * 0.010 + 0.005
    assert "SingleStream" in result.serving.summary_log
    assert result.energy is not None and result.clocks is not None
    check_case(result, "case")


@pytest.mark.alone
@pytest.mark.heavy
def test_server_below_capacity_meets_the_bound_and_above_it_does_not():
    # End to end (make test-heavy, alone): a p99 of ~60 queries below capacity depends on
    # the host waking the server in time. The single-stream test stays in make test.
    # 5 ms service, p99 <= 20 ms: the M/D/1 capacity is about 90 queries/s.
    below = run_isolated(served("server", 5.0, latency_bound_ms=20.0, server_qps=40.0,
                                min_duration_s=1.5))
    above = run_isolated(served("server", 5.0, latency_bound_ms=20.0, server_qps=160.0,
                                min_duration_s=1.5))
    assert below.measured and above.measured, (below.reason, above.reason)
    low, high = below.serving.headline_run, above.serving.headline_run
    assert low.meets_bound and low.perf_constraints_met and low.latency_ms["p99"] <= 20.0
    assert not high.meets_bound and high.latency_ms["p99"] > 20.0
    assert low.target_qps == 40.0 and low.scheduled_samples_per_s == pytest.approx(40, rel=0.2)


@pytest.mark.alone
@pytest.mark.heavy
def test_offline_and_multi_stream_serve_whole_batches():
    offline = run_isolated(served("offline", 2.0, batch=8))
    multi = run_isolated(served("multi_stream", 2.0, batch=4))
    assert offline.measured and multi.measured, (offline.reason, multi.reason)
    # offline: batches of 8 samples of 2 ms each call: at most 4,000 samples/s.
    run = offline.serving.headline_run
    assert run.mean_batch > 7 and 2000 < run.samples_per_s <= 4000
    assert multi.serving.headline_run.mean_batch == 4.0
    assert multi.serving.settings["samples_per_query"] == 4


@pytest.mark.alone
@pytest.mark.heavy
def test_the_capacity_search_converges_to_the_analytic_capacity():
    # The bound is on p90: a p99 of a few hundred queries (one seeded LoadGen schedule)
    # sits well below the stationary M/D/1 p99 (seen: 15.9 ms simulated on a run's own
    # arrivals against 19.5 ms stationary), so p99 capacities need runs of thousands of
    # queries; p90 of 4 s runs converges.
    result = run_isolated(served("server", 5.0, latency_bound_ms=12.0, latency_percentile=0.9,
                                 min_duration_s=4.0, min_queries=200, capacity_tolerance=0.03))
    assert result.measured, result.reason
    runs = result.serving.runs
    # The service time the server sustains: 1 / the completed rate of the first probe. The
    # search starts at 1 / (one timed serve(1)), the sleep alone, so the server, whose
    # every query also costs the SUT's own work (its loop, LoadGen's completion callback),
    # is saturated there: busy throughout, it completes 1 / (service) a second. 5.1 ms of
    # sleep took 5.3-5.7 ms a query on this VM, depending on how busy its host was.
    # One probe is one moment of the host, though: a CI run's first probe read 6.1 ms
    # where the probes after it ran ~5.5 ms (capacity 61 expected, 76 found). The service
    # time over the search lies between the quickest query any probe saw (its latency is
    # at least its service) and that saturated probe's; on a quiet host the two are within
    # a few percent. M/D/1 capacity moves about twice as fast as the service time here, so
    # the capacity is checked against that range (10% either side). A p50 or p99 read for
    # the p90 (124+ or under 36 q/s at these services) still falls far outside.
    saturated = runs[0]
    assert not saturated.meets_bound
    assert saturated.samples_per_s <= 1.02 * saturated.scheduled_samples_per_s
    slowest = 1 / saturated.samples_per_s
    quickest = min(r.latency_ms["min"] for r in runs) / 1000
    assert 0.005 < quickest <= slowest * 1.02, (quickest, slowest)
    low, high = (md1_capacity(service, 0.012, q=0.9) for service in (slowest, quickest))
    found = result.serving.capacity_qps
    assert 0.9 * low <= found <= 1.1 * high, (found, low, high, slowest, quickest)
    assert len(runs) >= 4 and result.serving.headline_run.meets_bound


def fake_run(rate: float, meets: bool) -> LoadGenRun:
    return LoadGenRun("server", rate, "INVALID", None, meets, True, True, False, meets,
                      rate, rate, 100, 100, {"p99": 1.0}, 1.0, 1.0)


@pytest.mark.parametrize("start", [10.0, 123.0, 1000.0])
def test_find_capacity_brackets_then_bisects_to_tolerance(start):
    tried = []

    def probe(rate: float) -> LoadGenRun:
        tried.append(rate)
        return fake_run(rate, rate <= 123.0)

    found, method = find_capacity(probe, start, tolerance=0.02, max_probes=30)
    assert 123.0 / 1.02 <= found <= 123.0 and "bracketed" in method
    assert len(tried) < 15


def test_find_capacity_says_when_nothing_meets_the_bound():
    found, method = find_capacity(lambda r: fake_run(r, False), 100.0, 0.05, 4)
    assert found is None and "no probe met the bound" in method
    found, method = find_capacity(lambda r: fake_run(r, True), 100.0, 0.05, 3)
    assert found == 400.0 and "probes ran out" in method


def test_the_suite_refuses_bad_serving_settings(write_suite):
    good = """
    [[benchmark]]
    workload = "sleep"
    phase = "infer"
    matrix = { scenario = ["single_stream", "server"] }
    serving = { latency_bound_ms = 15, server_qps = 0 }
    """
    cases = expand_suite(load_suite(write_suite(good)))
    assert [c.serving.latency_bound_ms for c in cases] == [15.0, 15.0]
    for bad, key in [('serving = { latency_bond_ms = 15 }', "serving"),
                     ('serving = { latency_bound_ms = -1 }', "latency_bound_ms"),
                     ('serving = { latency_percentile = 1.5 }', "latency_percentile")]:
        with pytest.raises(BenchInputError) as err:
            load_suite(write_suite(good.replace(
                "serving = { latency_bound_ms = 15, server_qps = 0 }", bad)))
        assert key in str(err.value)
    with pytest.raises(BenchInputError, match="no scenario axis"):
        load_suite(write_suite("""
        [[benchmark]]
        workload = "linreg"
        phase = "train"
        serving = { latency_bound_ms = 15 }
        """))


def test_a_record_whose_headline_is_not_a_run_is_refused():
    result = run_isolated(served("single_stream", 1.0, min_duration_s=0.2, min_queries=16))
    result.serving.headline = 3
    with pytest.raises(SchemaError, match="headline"):
        check_case(result, "case")


@pytest.mark.alone
@pytest.mark.heavy
def test_max_batch_under_a_latency_bound_finds_the_known_batch():
    # End to end on real workers (make test-heavy); the search's logic, contention
    # included, is tested on scripted probes in test_max_batch.py.
    # Each step sleeps 10 ms per sample: batch 4 takes 40 ms, batch 5 50 ms; p99 <= 45 ms.
    case = CaseSpec("sleep", "infer", {"device": "cpu", "batch_size": 1, "scenario":
                                       "closed_loop"},
                    {"sleep_ms": 0.0, "per_sample_ms": 10.0}, QUICK)
    found = max_batch_for_case(case, latency=parse_latency_bound("p99_ms=45"), ceiling=64)
    assert found.max_batch == 4, found.probes
    assert found.first_over_latency == 5 and found.first_oom is None
    assert found.at_max.latency_ms == pytest.approx(40, rel=0.1)
    assert found.latency_bound == "p99_ms=45"


@pytest.mark.heavy  # not alone: the memory cap decides; the latency bound is 4x away
def test_max_batch_under_both_bounds_stops_at_the_tighter(tmp_path):
    # ballast: 64 MiB a sample under a memory cap that fits about 3; the latency bound
    # (20 ms per sample, p99 <= 250 ms) would allow 12.
    base = run_isolated(CaseSpec("ballast", "infer", {"device": "cpu", "batch_size": 1},
                                 {"mib_per_sample": 1}, QUICK)).memory.peak_rss_mib
    case = CaseSpec("ballast", "infer", {"device": "cpu", "batch_size": 1},
                    {"mib_per_sample": 64, "per_sample_ms": 20.0},
                    Budget(**{**QUICK.to_dict(), "memory_limit_mib": base + 3.5 * 64}))
    found = max_batch_for_case(case, latency=parse_latency_bound("p99_ms=250"), ceiling=64)
    assert found.max_batch == 3, found.probes
    assert found.first_oom == 4


@pytest.mark.parametrize("text", ["p99=20", "p98_ms=20", "p99_ms=0", "p99_ms=nan", "p99_ms"])
def test_a_bad_latency_bound_is_one_line(text):
    with pytest.raises(BenchInputError) as err:
        parse_latency_bound(text)
    assert "\n" not in str(err.value) and "p99_ms" in str(err.value)


def write_zone(folder, name: str, joules: float, wrap_j: float = 1000.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "name").write_text(name + "\n")
    (folder / "energy_uj").write_text(f"{int(joules * 1e6)}\n")
    (folder / "max_energy_range_uj").write_text(f"{int(wrap_j * 1e6)}\n")


def test_rapl_energy_adds_packages_and_dram_unwraps_and_skips_core(tmp_path):
    package, dram, core = (tmp_path / "intel-rapl:0", tmp_path / "intel-rapl:0:0",
                           tmp_path / "intel-rapl:0:1")
    write_zone(package, "package-0", 990.0)
    write_zone(dram, "dram", 10.0)
    write_zone(core, "core", 5.0)
    with EnergyMeter("cpu", powercap=tmp_path) as meter:
        write_zone(package, "package-0", 20.0)  # wrapped past 1000 J: 30 J used
        write_zone(dram, "dram", 14.0)
        write_zone(core, "core", 25.0)  # inside the package: not added again
    energy = meter.result(samples=100)
    assert energy.measured and energy.joules == pytest.approx(34.0)
    assert energy.joules_per_sample == pytest.approx(0.34)
    assert energy.samples_per_joule == pytest.approx(100 / 34)
    assert set(energy.domains) == {"rapl:intel-rapl:0:package-0", "rapl:intel-rapl:0:0:dram"}


def test_energy_without_rapl_says_why(tmp_path):
    with EnergyMeter("cpu", powercap=tmp_path / "absent") as meter:
        pass
    energy = meter.result(samples=10)
    assert not energy.measured and energy.joules is None
    assert "does not exist" in energy.reason


def test_a_clock_that_drops_is_throttled(tmp_path):
    freq = tmp_path / "cpu0" / "cpufreq" / "scaling_cur_freq"
    freq.parent.mkdir(parents=True)
    freq.write_text("3000000\n")
    with ClockSampler("cpu", cpufreq=tmp_path, interval_s=0.01) as steady:
        time.sleep(0.05)
    assert not steady.result().throttled and steady.result().cpu_mhz["max"] == 3000
    with ClockSampler("cpu", cpufreq=tmp_path, interval_s=0.01) as clocks:
        time.sleep(0.03)
        freq.write_text("2000000\n")
        time.sleep(0.03)
    result = clocks.result()
    assert result.throttled and result.cpu_mhz["min"] == 2000
    assert clocks.warning().startswith("throttled: cpu clock dropped")


def test_clocks_unreadable_here_are_named(tmp_path):
    with ClockSampler("cpu", cpufreq=tmp_path) as clocks:
        pass
    result = clocks.result()
    assert not result.throttled and result.cpu_mhz == {}
    assert any("scaling_cur_freq" in u for u in result.unreadable)


@pytest.fixture(scope="module")
def server_record():
    """One real server case (a 2 ms service at 100 queries/s, far below capacity). A case
    the host stole CPU from is contended, which the gate judges one way only (a slowdown
    of it is inconclusive): these tests are of the serving checks, so it is taken as ok."""
    result = run_isolated(served("server", 2.0, latency_bound_ms=20.0, server_qps=100.0,
                                 min_duration_s=0.5, min_queries=32))
    if result.status == "contended":
        result.status, result.reason = "ok", None
    return result


def _with_run(case, **changes):
    import copy

    out = copy.deepcopy(case)
    run = out.serving.headline_run
    for key, value in changes.items():
        if key == "p99":
            run.latency_ms["p99"] = value
        else:
            setattr(run, key, value)
    return out


def test_the_gate_fails_a_served_latency_regression_and_a_lost_bound(server_record, tmp_path,
                                                                     capsys):
    from bench.cli import main
    from tests.builders import run as record_of
    from tests.builders import write

    base = server_record
    assert base.measured and base.serving.headline_run.meets_bound
    p99 = base.serving.headline_run.latency_ms["p99"]
    files = {name: write(tmp_path / f"{name}.json", record_of(case)) for name, case in {
        "base": base, "same": _with_run(base),
        "slower": _with_run(base, p99=p99 * 1.3),
        "lost": _with_run(base, meets_bound=False),
        "unserved": dataclasses_replace(base, serving=None)}.items()}
    gate = ["gate", "--baseline", files["base"], "--current"]
    assert main([*gate, files["same"]]) == 0
    assert main([*gate, files["slower"]]) == 1
    assert "server: p99 latency x1.300" in capsys.readouterr().out
    assert main([*gate, files["lost"]]) == 1
    assert "the latency bound met before is missed now" in capsys.readouterr().out
    # A served baseline against a record without the scenario: cannot judge, never a pass.
    assert main([*gate, files["unserved"]]) != 0
    assert "did not serve" in capsys.readouterr().out
    policy = tmp_path / "policy.toml"
    policy.write_text("[serving]\nmax_latency_growth = 0.5\n")
    assert main([*gate, files["slower"], "--policy", str(policy)]) == 0


def test_a_capacity_that_fell_or_vanished_regresses():
    from bench.reports.compare import compare_case
    from bench.reports.gate import Policy, check_serving

    base = run_isolated(served("server", 2.0, latency_bound_ms=20.0, min_duration_s=0.3,
                               min_queries=16, capacity_tolerance=0.2, max_probes=6))
    assert base.measured and base.serving.capacity_qps, base.reason
    import copy

    fell, vanished = copy.deepcopy(base), copy.deepcopy(base)
    fell.serving.capacity_qps *= 0.8
    vanished.serving.capacity_qps = None
    for current, ratio in ((fell, "x0.800"), (vanished, "x0.000")):
        worse, _ = check_serving(compare_case(base, current), Policy())
        assert worse and f"capacity {ratio}" in worse
    assert check_serving(compare_case(base, copy.deepcopy(base)), Policy()) == (None, None)


def dataclasses_replace(case, **changes):
    import dataclasses

    return dataclasses.replace(case, **changes)
