"""Result files: round trip, refusal of foreign/unknown/corrupt files, the report."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from bench.cli import main
from bench.errors import BenchInputError
from bench.reports.table import FORMATS, render_report
from bench.results.schema import (
    SCHEMA_VERSION,
    CaseResult,
    RunInfo,
    RunRecord,
    ThroughputResult,
    TimingResult,
)
from bench.results.store import ResultStore, json_safe, load_run


def _record() -> RunRecord:
    info = RunInfo(run_id="abc", suite_name="t", suite_path="suites/t.toml",
                   suite_sha256="0" * 64, started_at="2026-11-23T00:00:00+00:00",
                   command=["bench"])
    timing = TimingResult(
        timer="perf_counter_ns", timer_description="d", step_description="s",
        cold_start_s=0.1, warmup_iterations=3, warmup_steady=True, warmup_s=0.2,
        iters_per_trial=2, trial_samples_s=[[0.01, 0.011], [0.012, 0.01]],
        trial_means_s=[0.0105, 0.011], median_s=0.01075, mean_s=0.01075, std_s=0.0003,
        cv=0.03, ci_low_s=0.0105, ci_high_s=0.011, ci_level=0.95, ci_method="m",
        latency_s={"p50": 0.0105, "p90": 0.0116, "p99": 0.0119}, stop_reason="ci_target")
    ok = CaseResult(case_id="w/infer[a=1]", workload="w", phase="infer", axes={"a": 1},
                    params={}, status="ok", timing=timing,
                    throughput=ThroughputResult(value=93.0, ci_low=90.9, ci_high=95.2,
                                                unit="samples/s", samples_per_step=1,
                                                method="m"))
    skipped = CaseResult(case_id="w/infer[a=2]", workload="w", phase="infer", axes={"a": 2},
                         params={}, status="skipped", reason="CUDA not available")
    return RunRecord(run=info, fingerprint={"cpu": {"model": "x"}}, cases=[ok, skipped])


def test_round_trip(tmp_path):
    path = tmp_path / "run.json"
    store = ResultStore.create(path, _record())
    loaded = load_run(path)
    assert loaded == store.record
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_the_file_holds_the_record_as_asdict_gives_it_each_case_on_a_line(tmp_path):
    record = _record()
    record.cases[0].timing.trial_samples_s = [[0.01, 0.02, 1], [0.015, 0.5]]
    record.cases[0].details = {"pair": (1.0, -math.inf), "nested": [{"x": [1.5, math.nan]}]}
    path = tmp_path / "run.json"
    ResultStore.create(path, record)
    as_asdict = dataclasses.asdict(record)
    assert record.to_dict() == {"schema": as_asdict.pop("schema"),
                                "schema_version": as_asdict.pop("schema_version"), **as_asdict}
    text = path.read_text()
    assert json.loads(text) == json.loads(json.dumps(json_safe(record.to_dict())))
    assert "NaN" not in text and "Infinity" not in text
    case_lines = [line for line in text.splitlines() if line.startswith('{"case_id"')]
    assert [json.loads(line.rstrip(","))["case_id"] for line in case_lines] == \
        [case.case_id for case in record.cases]
    assert load_run(path).cases[0].timing == record.cases[0].timing


def test_append_replaces_same_case_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "run.json"
    record = _record()
    store = ResultStore.create(path, record)
    store.append(CaseResult(case_id="w/infer[a=2]", workload="w", phase="infer",
                            axes={"a": 2}, params={}, status="crashed", reason="x"))
    assert [c.status for c in load_run(path).cases] == ["ok", "crashed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize("content, message", [
    ("not json at all", "not a JSON result file"),
    ('{"benchmarks": []}', "not a bench run file"),
    ('[1, 2]', "not a bench run file"),
    ('{"schema": "bench.run", "schema_version": 99}', "unsupported schema version 99"),
    ('{"schema": "bench.run", "schema_version": 1, "run": {}}', "corrupt result file"),
])
def test_foreign_or_corrupt_files_are_refused(tmp_path, capsys, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(BenchInputError, match=message):
        load_run(path)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(path) in err


def test_unknown_case_key_is_corrupt(tmp_path):
    path = tmp_path / "run.json"
    data = _record().to_dict()
    data["cases"][0]["surprise"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(BenchInputError, match="unknown keys"):
        load_run(path)


@pytest.mark.parametrize("split, message", [
    ({"parameters_mib": "x", "gradients_mib": 1.0}, "memory_split.parameters_mib"),
    ({"optimizer_state_mib": float("nan")}, "memory_split.optimizer_state_mib"),
    ([1, 2], "memory_split: expected"),
])
def test_a_memory_split_that_is_not_finite_mib_is_corrupt(tmp_path, capsys, split, message):
    """Found by the fuzzer (seed 12): a split whose figure was a string ended bench report
    in a traceback."""
    path = tmp_path / "run.json"
    data = _record().to_dict()
    data["cases"][0]["details"]["memory_split"] = split
    path.write_text(json.dumps(data))
    with pytest.raises(BenchInputError, match=message):
        load_run(path)
    assert main(["report", str(path)]) == 2 and message in capsys.readouterr().err


def test_a_memory_split_with_fewer_figures_is_reported():
    record = _record()
    record.cases[0].details["memory_split"] = {"parameters_mib": 1.5, "method": "m"}
    assert "1.5" in render_report(record, "github")


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_formats(fmt):
    text = render_report(_record(), fmt)
    assert "w/infer[a=1]" in text and "10.75" in text
    assert "CUDA not available" in text


def test_report_cli(tmp_path, capsys):
    path = tmp_path / "run.json"
    ResultStore.create(path, _record())
    assert main(["report", str(path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("case,status,step ms (median)")
    assert len(lines) == 3


def test_skipped_cases_are_one_line_under_the_table_by_reason_and_rows_in_csv():
    from tests.builders import case, run, trials

    skipped = []
    for i, reason in enumerate(["no CUDA device here", "no CUDA device here",
                                "int8 quantization starts from the fp32 model"]):
        c = case(f"w/infer[s={i}]", None, status="skipped")
        c.reason, c.memory, c.accuracy = reason, None, None
        skipped.append(c)
    record = run(case("w/infer[s=ok]", trials(0.01)), *skipped)
    text = render_report(record)
    assert "w/infer[s=0]" not in text and "w/infer[s=ok]" in text
    assert ("3 skipped here (not run, not failures): 2 x no CUDA device here; 1 x int8 "
            "quantization starts from the fp32 model") in text
    assert all(c.case_id in render_report(record, "csv") for c in skipped)
