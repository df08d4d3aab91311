"""The host probe: its kernels are timed and recorded with a run, and compare/gate set the
host's change beside the speed ratios (reported, never gated)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.cli import main
from bench.measurement.host_probe import (
    PROBE_VERSION,
    describe,
    describe_ratio,
    host_ratio,
    probe_host,
)
from bench.reports.compare import compare_runs
from bench.reports.gate import Policy, evaluate, markdown
from bench.results import load_run
from bench.results.schema import HostProbe
from tests.builders import case, run, sleep_suite, trials, write


def probe(matmul: float, python: float, when: str = "start",
          version: int = PROBE_VERSION) -> HostProbe:
    return HostProbe(when, "now", {"matmul_gflops": matmul, "python_mips": python}, "test",
                     version)


def test_the_probe_times_its_kernels_on_one_thread_and_restores_the_threads():
    threads = torch.get_num_threads()
    result = probe_host("start")
    assert torch.get_num_threads() == threads
    assert result.when == "start" and result.version == PROBE_VERSION
    assert set(result.kernels) == {"matmul_gflops", "python_mips"}
    assert all(math.isfinite(v) and v > 0 for v in result.kernels.values())
    assert "one thread" in result.method and "256 x 256" in result.method
    assert describe([result]).startswith("host probe (one thread): start matmul ")


def test_the_host_ratio_is_the_geometric_mean_of_the_kernels_median_ratios():
    base = [probe(10.0, 40.0), probe(12.0, 40.0, "end")]  # medians 11 and 40
    cur = [probe(5.5, 10.0), probe(5.5, 10.0, "end")]
    ratios = host_ratio(base, cur)
    assert ratios["matmul_gflops"] == pytest.approx(0.5)
    assert ratios["python_mips"] == pytest.approx(0.25)
    assert ratios["host"] == pytest.approx(math.sqrt(0.5 * 0.25))
    assert "host x0.354 (geometric mean of matmul x0.500, Python loop x0.250)" in \
        describe_ratio(base, cur)


@pytest.mark.parametrize("base, cur, why", [
    ([], [probe(1, 1)], "the baseline run has no host probe"),
    ([probe(1, 1)], [], "the current run has no host probe"),
    ([probe(1, 1, version=PROBE_VERSION + 1)], [probe(1, 1)],
     "the baseline run has no host probe"),
    ([probe(1, math.nan)], [probe(1, 1)], "not a finite positive number"),
    ([probe(1, 1)], [probe(0.0, 1)], "not a finite positive number"),
])
def test_probes_that_cannot_be_compared_are_said_so_and_never_scale_a_speed(base, cur, why):
    assert host_ratio(base, cur) is None
    assert why in describe_ratio(base, cur)
    assert describe_ratio([], []) == ""


def test_the_gate_sets_the_host_change_beside_each_speed_verdict(tmp_path, capsys):
    base = run(case("w/infer[a=1]", trials(0.1, seed=1)))
    cur = run(case("w/infer[a=1]", trials(0.2, seed=2)))  # half the speed, on a host ...
    base.run.host_probes = [probe(20.0, 40.0)]
    cur.run.host_probes = [probe(10.0, 20.0)]  # ... at half the speed
    report = evaluate(compare_runs(base, cur), Policy(speed_max_drop=0.75))
    text = markdown(report, "b", "c", Policy(speed_max_drop=0.75),
                    (base.run.host_probes, cur.run.host_probes))
    assert "host x0.500" in text and "| speed ÷ host |" in text
    row = next(line for line in text.splitlines() if line.startswith("| `w/infer[a=1]`"))
    assert float(row.split("|")[-2]) == pytest.approx(1.0, abs=0.02), row  # 0.5 / 0.5
    # Reported, never gated: the same verdict and exit code as without the probes.
    assert report.exit_code == evaluate(compare_runs(base, cur),
                                        Policy(speed_max_drop=0.75)).exit_code
    b, c = write(tmp_path / "b.json", base), write(tmp_path / "c.json", cur)
    main(["gate", "--baseline", b, "--current", c])
    assert "host x0.500" in capsys.readouterr().out
    assert main(["compare", b, c]) == 0
    assert "host x0.500" in capsys.readouterr().out


def test_bench_run_host_probe_records_a_probe_before_and_after_the_cases(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(sleep_suite("probed", 1))
    out = tmp_path / "r.json"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--host-probe"]) == 0
    assert "host probe (one thread): start matmul" in capsys.readouterr().out
    record = load_run(out)
    assert [p.when for p in record.run.host_probes] == ["start", "end"]
    assert json.loads(out.read_text())["run"]["host_probes"][0]["version"] == PROBE_VERSION
    # Without the option no probe is taken, and the report has no probe line.
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert "host probe" not in capsys.readouterr().out
    assert load_run(out).run.host_probes == []
