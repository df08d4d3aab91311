"""Served generation: LoadGen with token latencies (use_token_latencies, FirstTokenComplete)
against a scripted SUT whose first token and later tokens take known sleeps; the goodput
count; the server held to TTFT and TPOT bounds; the settings and refusals around them."""

from __future__ import annotations

import contextlib
import time

import pytest

from bench.errors import BenchInputError
from bench.measurement.serving import ServedPhase, loadgen_run
from bench.orchestrate.plan import skip_reason
from bench.reports.serving import render_served_tokens
from bench.results.schema import ServingResult
from bench.spec import load_suite
from bench.spec.expand import expand_suite
from bench.spec.model import ServingSpec
from tests.builders import case as plain_case
from tests.builders import run as record_of

FIRST_MS, STEP_MS, TOKENS = 20.0, 5.0, 5


def scripted_serve(n: int, first_token=None) -> int:
    """A generate call: the first token after FIRST_MS, then TOKENS - 1 steps of STEP_MS."""
    time.sleep(FIRST_MS / 1e3)
    first_token()
    time.sleep(STEP_MS / 1e3 * (TOKENS - 1))
    return TOKENS


def served(**spec) -> ServedPhase:
    settings = {"min_duration_s": 0.3, "min_queries": 8, **spec}
    service = (FIRST_MS + STEP_MS * (TOKENS - 1)) / 1e3
    return ServedPhase(scripted_serve, lambda: None, "cpu", ServingSpec(**settings),
                       contextlib.nullcontext, batch=1, expected_batch_s=service,
                       expected_sample_s=service, tokens=True)


def test_loadgen_measures_ttft_and_tpot_of_a_scripted_sut():
    run, sut, summary = loadgen_run(served(), "single_stream")
    assert run.ttft_ms is not None and run.tpot_ms is not None
    # Sanity bounds: a sleep is never shorter; a loaded host may wake it late.
    assert FIRST_MS <= run.ttft_ms["p50"] <= 3 * FIRST_MS + 20
    assert STEP_MS <= run.tpot_ms["p50"] <= 3 * STEP_MS + 20
    assert run.ttft_ms["min"] <= run.ttft_ms["p50"] <= run.ttft_ms["max"]
    # LoadGen's TPOT is (latency - TTFT) / (tokens - 1): its means agree with its latency.
    assert run.latency_ms["mean"] == pytest.approx(
        run.ttft_ms["mean"] + (TOKENS - 1) * run.tpot_ms["mean"], rel=1e-3)
    # The SUT's own per-request figures: one per sample, each within LoadGen's range (the
    # SUT's clock starts in LoadGen's issue callback, after LoadGen's own timestamp).
    assert len(sut.ttfts) == len(sut.tpots) == run.samples >= 8
    assert max(sut.ttfts) * 1e3 <= run.ttft_ms["max"] + 0.5
    # Tokens/s and requests/s are LoadGen's separate figures: TOKENS a request apart (their
    # spans differ by LoadGen's overhead, so the ratio is a sanity bound, not exact).
    assert TOKENS / 2 < run.tokens_per_s / run.samples_per_s < TOKENS * 2
    assert "first token" in summary.lower()
    # No bounds set: no goodput.
    assert run.requests_meeting_bounds is None and run.goodput_per_s is None


def test_goodput_counts_the_requests_within_both_bounds():
    loose, _, _ = loadgen_run(served(ttft_bound_ms=10_000, tpot_bound_ms=10_000),
                              "single_stream")
    assert loose.requests_meeting_bounds == loose.samples
    assert loose.goodput_per_s == pytest.approx(loose.samples_per_s)
    # A TPOT bound below the scripted step: no request meets it, however loose the TTFT's.
    tight, _, _ = loadgen_run(served(ttft_bound_ms=10_000, tpot_bound_ms=STEP_MS / 2),
                              "single_stream")
    assert tight.requests_meeting_bounds == 0 and tight.goodput_per_s == 0.0


def test_the_server_is_held_to_the_token_bounds_not_the_latency_bound():
    # Far below capacity (5 requests/s of a 40 ms service). The latency bound (1 ms) is
    # missed by every request, but with token latencies LoadGen holds the server to TTFT and
    # TPOT only.
    common = {"server_qps": 5.0, "latency_bound_ms": 1.0, "latency_percentile": 0.9,
              "min_queries": 4}
    met, _, _ = loadgen_run(served(ttft_bound_ms=10_000, tpot_bound_ms=10_000, **common),
                            "server", 5.0)
    assert met.perf_constraints_met is True and met.meets_bound
    missed, _, _ = loadgen_run(served(ttft_bound_ms=FIRST_MS / 4, tpot_bound_ms=10_000,
                                      **common), "server", 5.0)
    assert missed.perf_constraints_met is False and not missed.meets_bound


def test_token_bounds_are_left_out_of_the_settings_until_set():
    # Unset, they are not in the case key, so keys of cases written before them match.
    assert "ttft_bound_ms" not in ServingSpec().to_dict()
    spec = ServingSpec(ttft_bound_ms=500.0, tpot_bound_ms=50.0)
    assert spec.has_token_bounds and spec.to_dict()["tpot_bound_ms"] == 50.0


GENERATE = """
[suite]
name = "served"
[[benchmark]]
workload = "smollm2"
phase = "generate"
matrix = {{ output_tokens = [{out}], scenario = ["{scenario}"] }}
{serving}
"""


def _cases(write_suite, scenario, out=8, serving=""):
    path = write_suite(GENERATE.format(out=out, scenario=scenario, serving=serving))
    return expand_suite(load_suite(path))


def test_a_served_generate_case_states_what_it_lacks(write_suite):
    (server,) = _cases(write_suite, "server")
    assert "needs serving.ttft_bound_ms and serving.tpot_bound_ms" in skip_reason(server)
    (bounded,) = _cases(write_suite, "server",
                        serving="serving = { ttft_bound_ms = 900, tpot_bound_ms = 60 }")
    assert skip_reason(bounded) is None
    assert bounded.serving.ttft_bound_ms == 900.0
    (one_token,) = _cases(write_suite, "single_stream", out=1)
    assert "output_tokens >= 2" in skip_reason(one_token)
    (single,) = _cases(write_suite, "single_stream")
    assert skip_reason(single) is None


def test_a_bad_token_bound_is_one_line(write_suite):
    with pytest.raises(BenchInputError) as info:
        _cases(write_suite, "server", serving="serving = { ttft_bound_ms = -5 }")
    assert "serving.ttft_bound_ms" in str(info.value) and "\n" not in str(info.value)


def _served_case(scenario: str = "single_stream", **spec):
    phase = served(ttft_bound_ms=10_000, tpot_bound_ms=10_000, latency_percentile=0.9, **spec)
    run, sut, summary = loadgen_run(phase, scenario, spec.get("server_qps"))
    result = plain_case(f"toy/generate[scenario={scenario}]", None)
    result.serving = ServingResult(
        scenario=scenario, loadgen_version="x", settings=phase.spec.to_dict(),
        sut="scripted", cold_start_s=0.0, warmup="none", runs=[run], headline=0,
        latency_samples_s=sut.latencies, summary_log=summary, ttft_samples_s=sut.ttfts,
        tpot_samples_s=sut.tpots)
    return result


def test_the_token_table_shows_ttft_tpot_goodput_and_the_bound():
    result = _served_case()
    run = result.serving.headline_run
    table = render_served_tokens(record_of(result))
    row = next(line for line in table.splitlines() if "toy/generate" in line)
    assert f"{run.ttft_ms['p50']:.4g}" in row and f"{run.tpot_ms['p90']:.4g}" in row
    assert f"{run.samples}/{run.samples}" in row
    assert render_served_tokens(record_of(plain_case("plain/infer", [0.01] * 5))) == ""


@pytest.mark.slow
@pytest.mark.heavy  # about 15 s: the served path is tested on scripted SUTs above
def test_smollm2_served_single_stream_in_a_worker(write_suite):
    """The real model served: a worker runs LoadGen's single stream on generate calls with
    token latencies, then the quality figures, as any served case."""
    from bench.launch.isolation import run_isolated

    path = write_suite(GENERATE.format(out=4, scenario="single_stream", serving=(
        "serving = { min_duration_s = 0.2, min_queries = 4 }\n"
        "params = { perplexity_tokens = 256, agreement_prompts = 2 }")).replace(
        "output_tokens = [4]", "output_tokens = [4], input_tokens = [16]"))
    (case,) = expand_suite(load_suite(path))
    result = run_isolated(case)
    assert result.measured, (result.status, result.reason, result.stderr_tail)
    run = result.serving.headline_run
    assert run.ttft_ms["p50"] > 0 and run.tpot_ms["p50"] > 0 and run.queries >= 4
    # Each request's latency is its TTFT and 3 steps: LoadGen's means add up.
    assert run.latency_ms["mean"] == pytest.approx(
        run.ttft_ms["mean"] + 3 * run.tpot_ms["mean"], rel=1e-3)
    assert len(result.serving.ttft_samples_s) == run.samples
    assert "FirstTokenComplete" in result.serving.sut
    assert result.generation is None and result.accuracy.metrics["greedy_agreement"] == 1.0


def test_the_gate_fails_a_served_tpot_or_ttft_regression_and_a_lost_token_bound(tmp_path,
                                                                              capsys):
    import copy

    from bench.cli import main
    from tests.builders import write

    base = _served_case("server", server_qps=5.0, min_queries=4)
    assert base.serving.headline_run.meets_bound

    def changed(figure=None, factor=1.0, lost=False):
        out = copy.deepcopy(base)
        run = out.serving.headline_run
        if figure:
            getattr(run, figure)["p90"] *= factor
        run.meets_bound = run.meets_bound and not lost
        return out

    files = {name: write(tmp_path / f"{name}.json", record_of(case)) for name, case in {
        "base": base, "same": changed(), "tpot": changed("tpot_ms", 1.3),
        "ttft": changed("ttft_ms", 1.3), "lost": changed(lost=True)}.items()}
    gate = ["gate", "--baseline", files["base"], "--current"]
    assert main([*gate, files["same"]]) == 0
    assert main([*gate, files["tpot"]]) == 1
    assert "p90 TPOT x1.300" in capsys.readouterr().out
    assert main([*gate, files["ttft"]]) == 1
    assert "p90 TTFT x1.300" in capsys.readouterr().out
    assert main([*gate, files["lost"]]) == 1
    assert "the TTFT/TPOT bound met before is missed now" in capsys.readouterr().out
