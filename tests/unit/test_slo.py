"""Assertions users write in the suite: service levels per benchmark (latency,
throughput, memory, speed-up and parity against the reference), checked by the report and
by bench gate; gate thresholds per case glob instead of one global threshold."""

from __future__ import annotations

import dataclasses

import pytest

from bench.cli import main
from bench.errors import BenchInputError
from bench.reports.compare import compare_runs
from bench.reports.gate import Policy, evaluate, load_policy
from bench.reports.slo import slo_failures
from bench.reports.table import render_report
from bench.results.schema import AccuracyResult, PairedSpeedup, ThroughputResult
from bench.spec import load_suite
from tests.builders import case, run, trials, write

REFERENCE = {"quantization": "none"}


def variant(case_id, quantization, median, slo, accuracy=0.9, latency_p99=None):
    c = case(case_id, trials(median, seed=len(case_id)))
    c.axes = {"batch_size": 8, "quantization": quantization}
    c.parity_reference = dict(REFERENCE)
    c.slo = dict(slo)
    c.timing.latency_s = {"p99": latency_p99 or median * 1.2}
    c.throughput = ThroughputResult.from_timing(c.timing, 8, "samples/s")
    c.accuracy = AccuracyResult({"acc": accuracy}, [], None, task_metric="acc",
                                higher_is_better=True)
    return c


def test_the_suite_declares_slos_and_bad_ones_are_one_line(write_suite):
    suite = load_suite(write_suite('[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n'
                                   'slo = { p99_ms = 20, min_throughput = 500 }\n'))
    assert suite.benchmarks[0].slo == {"p99_ms": 20.0, "min_throughput": 500.0}
    for bad, problem in (("p99 = 20", "unknown key"), ("p99_ms = -1", "too small"),
                         ("min_parity = 1.5", "too large"), ('p99_ms = "fast"', "expected")):
        with pytest.raises(BenchInputError, match=problem) as info:
            load_suite(write_suite('[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n'
                                   f"slo = {{ {bad} }}\n"))
        assert "benchmark[0].slo" in str(info.value)


def test_slo_bounds_and_relations_to_the_reference():
    fp32 = variant("m/infer[quantization=none]", "none", 0.010, {"p99_ms": 20})
    int8 = variant("m/infer[quantization=int8]", "int8", 0.008,
                   {"p99_ms": 5, "min_throughput": 500, "min_speedup": 1.3, "min_parity": 0.99},
                   accuracy=0.88)
    failures = slo_failures([fp32, int8])
    assert failures[fp32.case_id] == []
    text = "; ".join(failures[int8.case_id])
    assert "p99_ms 9.6" in text and "> 5" in text  # p99 = 1.2 x 8 ms
    assert "throughput" not in text  # 8 samples / 8 ms = 1000/s
    assert "speed-up over the reference 1.25x (ratio of medians, unpaired) < 1.3" in text
    assert "parity 0.9778 < 0.99" in text
    int8.vs_reference = PairedSpeedup(fp32.case_id, 4, 1.35, 1.3, 1.4, 0.01, [], [], "test")
    assert not any("speed-up" in f for f in slo_failures([fp32, int8])[int8.case_id])
    lone = dataclasses.replace(int8, vs_reference=None)
    assert "speed-up over the reference: not measured" in slo_failures([lone])[lone.case_id]
    crashed = variant("m/infer[quantization=none]", "none", 0.01, {"p99_ms": 20})
    crashed.status = "crashed"
    assert slo_failures([crashed])[crashed.case_id] == ["not measured (crashed)"]


def test_the_report_and_the_gate_check_slos(tmp_path, capsys):
    fp32 = variant("m/infer[quantization=none]", "none", 0.010, {"p99_ms": 20})
    int8 = variant("m/infer[quantization=int8]", "int8", 0.008, {"min_speedup": 1.3})
    record = run(fp32, int8)
    text = render_report(record, "csv")
    assert text.splitlines()[0].endswith(",SLO")
    assert "FAIL: speed-up over the reference 1.25x" in text and ",pass\r\n" in text
    report = evaluate(compare_runs(record, record), Policy())
    assert [(f.case_id, f.check) for f in report.regressions] == [(int8.case_id, "slo")]
    path = write(tmp_path / "r.json", record)
    assert main(["gate", "--baseline", path, "--current", path]) == 1
    assert "| `m/infer[quantization=int8]` | slo | speed-up over the reference" in \
        capsys.readouterr().out


def test_gate_thresholds_per_case_glob(tmp_path):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[speed]\nmax_drop = 0.05\n\n[[case]]\nmatch = "noisy/*"\n'
                           "speed.max_drop = 0.20\nmemory.gate = false\n")
    policy = load_policy(policy_file)
    assert policy.for_case("noisy/infer[a=1]").speed_max_drop == 0.20
    assert policy.for_case("noisy/infer[a=1]").gate_memory is False
    assert policy.for_case("steady/infer[a=1]").speed_max_drop == 0.05
    base = run(case("noisy/infer[a=1]", trials(0.100, seed=1)),
               case("steady/infer[a=1]", trials(0.100, seed=2)))
    cur = run(case("noisy/infer[a=1]", trials(0.110, seed=3), rss=900),
              case("steady/infer[a=1]", trials(0.110, seed=4)))
    report = evaluate(compare_runs(base, cur), policy)
    assert [(f.case_id, f.check) for f in report.regressions] == [("steady/infer[a=1]", "speed")]
    for bad, key in (('[[case]]\nspeed.max_drop = 0.1\n', "case[0].match"),
                     ('[[case]]\nmatch = "x*"\nspeed.max_dropp = 0.1\n', "case[0].speed.max_dropp"),
                     ('[[case]]\nmatch = "x*"\nspeed.max_drop = 2\n', "case[0].speed.max_drop")):
        policy_file.write_text(bad)
        with pytest.raises(BenchInputError, match=key.replace("[", "\\[").replace("]", "\\]")):
            load_policy(policy_file)
