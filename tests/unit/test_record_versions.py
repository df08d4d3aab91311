"""The record across versions: every committed result file loads, reports and
compares; a worker of another bench version is read (unknown fields left out with a
warning); a baseline that could not run is said, not counted as an improvement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import BenchInputError
from bench.files import read_bounded_text
from bench.reports.compare import compare_runs, render_comparison
from bench.reports.table import render_report
from bench.results.schema import SCHEMA_VERSION, CaseResult
from bench.results.store import load_run
from bench.typed import SchemaError, from_dict
from tests.builders import case, run, trials, write

REPO = Path(__file__).resolve().parents[2]
# Committed run files are gzipped (results/runs/*.json.gz); baselines are plain JSON.
COMMITTED = sorted(p for p in [*(REPO / "results").rglob("*.json"),
                               *(REPO / "results").rglob("*.json.gz")]
                   if '"schema": "bench.run"' in read_bounded_text(p, "run file")[:200])


def test_there_are_committed_runs_of_every_version():
    versions = {json.loads(read_bounded_text(p, "run file"))["schema_version"]
                for p in COMMITTED}
    assert 1 in versions and len(COMMITTED) >= 8


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_every_committed_result_file_loads_reports_and_compares(path):
    record = load_run(path)
    assert record.schema_version == SCHEMA_VERSION  # read through the migrations
    assert render_report(record)
    rows = compare_runs(record, record)
    assert render_comparison(rows)
    for c in record.cases:  # the label the migration read from the id is the id's own
        assert c.case_id.startswith(c.benchmark_key + "[")


def test_unknown_worker_fields_are_left_out_only_when_asked():
    data = json.loads(json.dumps(CaseResult("w/infer[a=1]", "w", "infer", {}, {}, "ok"),
                                 default=vars))
    data["from_the_future"] = 1
    with pytest.raises(SchemaError, match="unknown keys"):
        from_dict(CaseResult, data)
    dropped: list[str] = []
    assert from_dict(CaseResult, data, dropped=dropped).status == "ok"
    assert dropped == ["from_the_future"]


@pytest.mark.slow
def test_a_worker_of_a_newer_record_is_read_with_a_warning(tmp_path):
    from bench.launch.isolation import WorkerCode, run_isolated
    from bench.spec.model import Budget, CaseSpec

    newer = tmp_path / "newer"
    shutil.copytree(REPO / "bench", newer / "bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    worker = newer / "bench" / "runners" / "worker.py"
    text = worker.read_text()
    old = "json.dumps(json_safe(dataclasses.asdict(result)))"
    assert old in text
    worker.write_text(text.replace(old, "json.dumps(json_safe({**dataclasses.asdict(result), "
                                        "'energy_j': 1.5}))"))
    budget = Budget(min_trials=4, max_trials=4, trial_time_s=0.01, warmup_max_s=0.05,
                    max_time_s=0.3, timeout_s=60)
    result = run_isolated(CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 1.0},
                                   budget, label="x"), WorkerCode(newer))
    assert result.measured, (result.status, result.reason)
    assert any("left out: energy_j" in w for w in result.warnings)
    assert result.worker["bench_source"] == str(newer) and result.label == "x"


def test_a_baseline_that_could_not_run_is_said_not_counted_as_an_improvement(tmp_path,
                                                                             capsys):
    base = run(case("w/infer[a=1]", trials(0.1, seed=1)),
               case("w/infer[a=2]", None, status="crashed"))
    cur = run(case("w/infer[a=1]", trials(0.1, seed=2)),
              case("w/infer[a=2]", trials(0.1, seed=3)))
    code = main(["gate", "--baseline", write(tmp_path / "b.json", base),
                 "--current", write(tmp_path / "c.json", cur)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 improvements, 1 not compared (baseline could not run)" in out
    assert "the baseline could not run (crashed: RuntimeError: boom); now ok" in out


def _v3_gpt_case(compiled: bool) -> dict:
    return {"case_id": f"gpt/train[device=cpu,compile={compiled},batch_size=8]",
            "workload": "gpt", "phase": "train", "status": "skipped", "label": None,
            "axes": {"device": "cpu", "precision": "fp32", "compile": compiled, "batch_size": 8},
            "params": {}}


def test_version_3_gpt_compile_reads_as_the_backend_axis():
    from bench.results.migrations import migrate_case

    for compiled, backend in ((True, "compile"), (False, "eager")):
        case = migrate_case(_v3_gpt_case(compiled), 3, SCHEMA_VERSION)
        assert case["case_id"] == f"gpt/train[device=cpu,backend={backend},batch_size=8]"
        assert list(case["axes"]) == ["device", "precision", "backend", "batch_size"]
        assert case["axes"]["backend"] == backend
        assert case["parity_reference"] == {"precision": "fp32", "backend": "eager"}


def test_an_older_worker_reads_its_own_case_file_and_its_record_comes_back_the_same():
    """bench ab against a commit before version 4: the case file is written in the worker's
    version, and the id its worker records migrates back to the parent's id."""
    from bench.results.migrations import case_for_worker, migrate_case
    from bench.spec.model import Budget, CaseSpec

    spec = CaseSpec("gpt", "train", {"device": "cpu", "backend": "compile", "batch_size": 8},
                    {}, Budget(), id_axes=("device", "backend"),
                    parity_reference={"precision": "fp32", "backend": "eager"})
    old = case_for_worker(spec.to_dict(), SCHEMA_VERSION, 3)
    assert old["axes"] == {"device": "cpu", "compile": True, "batch_size": 8}
    as_old_worker_sees_it = CaseSpec.from_dict(old)
    assert as_old_worker_sees_it.case_id == "gpt/train[device=cpu,compile=True]"
    record = {"case_id": as_old_worker_sees_it.case_id, "workload": "gpt", "phase": "train",
              "axes": old["axes"], "params": {}, "status": "ok"}
    assert migrate_case(record, 3, SCHEMA_VERSION)["case_id"] == spec.case_id
    assert case_for_worker(spec.to_dict(), SCHEMA_VERSION, SCHEMA_VERSION) == spec.to_dict()


# The last commit whose worker writes schema 3, with gpt's compile switch as its own axis.
SCHEMA_3_COMMIT = "60e5353"


@pytest.mark.slow
def test_a_schema_3_worker_runs_a_gpt_case_of_this_version(tmp_path):
    """The real older worker (a worktree of SCHEMA_3_COMMIT) gets its case file in its own
    vocabulary (compile=False for backend=eager) and its record comes back as this
    version's: same id, the backend axis, the parity reference."""
    import subprocess

    from bench.launch.isolation import WorkerCode, run_isolated
    from bench.orchestrate.plan import plan_suite
    from bench.spec import load_suite

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False)

    if git("cat-file", "-e", f"{SCHEMA_3_COMMIT}^{{commit}}").returncode != 0:
        pytest.skip(f"this clone lacks {SCHEMA_3_COMMIT} (shallow?)")
    old = tmp_path / "old"
    assert git("worktree", "add", "--detach", str(old), SCHEMA_3_COMMIT).returncode == 0
    try:
        code = WorkerCode(old)
        assert code.record_version() == 3
        (tmp_path / "s.toml").write_text(
            '[suite]\nname = "s"\n[budget]\nmin_trials = 4\nmax_trials = 4\n'
            'trial_time_s = 0.01\nwarmup_max_s = 0.05\nmax_time_s = 1\ntimeout_s = 300\n'
            '[[benchmark]]\nworkload = "gpt"\nphase = "infer"\n'
            'params = { train_steps = 2, corpus_mib = 0.2, train_batch_size = 4 }\n'
            'matrix = { device = ["cpu"], backend = ["eager"], batch_size = [2] }\n')
        spec = plan_suite(load_suite(tmp_path / "s.toml"))[0].spec
        result = run_isolated(spec, code)
    finally:
        git("worktree", "remove", "--force", str(old))
    assert result.measured, (result.status, result.reason, result.stderr_tail)
    assert result.worker["bench_source"] == str(old)
    assert result.case_id == spec.case_id == "gpt/infer[device=cpu,batch_size=2,backend=eager]"
    assert result.axes["backend"] == "eager" and "compile" not in result.axes
    assert result.parity_reference == {"precision": "fp32", "backend": "eager"}


def test_a_version_8_timing_reads_as_per_iteration_trials(tmp_path):
    path = Path(write(tmp_path / "v8.json", run(case("w/infer[a=1]", trials(0.01)))))
    data = json.loads(path.read_text())
    data["schema_version"] = 8
    for c in data["cases"]:
        del c["timing"]["trial_timing"], c["timing"]["latency_trial_samples_s"]
    path.write_text(json.dumps(data))
    timing = load_run(path).cases[0].timing
    assert timing.trial_timing == "per_iteration" and timing.latency_trial_samples_s == []
    assert timing.latency_samples() == [d for t in timing.trial_samples_s for d in t]


def test_an_unknown_trial_timing_is_refused(tmp_path):
    path = Path(write(tmp_path / "bad.json", run(case("w/infer[a=1]", trials(0.01)))))
    data = json.loads(path.read_text())
    data["cases"][0]["timing"]["trial_timing"] = "guessed"
    path.write_text(json.dumps(data))
    with pytest.raises(BenchInputError, match="trial_timing.*valid: per_iteration, block"):
        load_run(path)


def _v12_ab_side(tmp_path: Path, name: str, medians: list[float], per_step: float) -> Path:
    """One side of a version-12 bench ab session: its gate figures in details."""
    path = Path(write(tmp_path / f"{name}.json", run(case("w/infer[a=1]", trials(medians[0])))))
    data = json.loads(path.read_text())
    data["schema_version"] = 12
    data["run"]["pairing"] = {"session": "s12", "side": name}
    (c,) = data["cases"]
    del c["rounds"], c["instructions"], c["injected_slowdown"]
    c["details"] = {"process_medians_s": medians, "ab_rounds": len(medians),
                    "ab_dropped_rounds": 1, "ab_dropped_reasons": ["current: steal 31%"],
                    "instructions_steps": 10, "instructions_per_step": per_step,
                    "instructions_method": "callgrind", "injected_slowdown": 0.1,
                    "trials_per_process": [20] * len(medians)}
    path.write_text(json.dumps(data))
    return path


def test_a_version_12_ab_pair_reads_its_gate_figures_as_typed_fields_and_gates_the_same(
        tmp_path):
    """Schema 13 moved the figures the gate decides on out of details: a version-12 A/B
    pair reads them typed, details keep only the rest, and the gate pairs its rounds."""
    from bench.reports.gate import Policy, evaluate

    base = load_run(_v12_ab_side(tmp_path, "baseline", [0.010, 0.011, 0.010, 0.011], 1e6))
    cur = load_run(_v12_ab_side(tmp_path, "current", [0.013, 0.014, 0.013, 0.014], 1.2e6))
    (c,) = cur.cases
    assert c.rounds.medians_s == [0.013, 0.014, 0.013, 0.014]
    assert c.rounds.left_out == 1 and c.rounds.left_out_reasons == ["current: steal 31%"]
    assert not c.rounds.out_of_time
    assert (c.instructions.steps, c.instructions.per_step, c.instructions.method) == \
        (10, 1.2e6, "callgrind")
    assert c.injected_slowdown == 0.1
    assert c.details == {"trials_per_process": [20] * 4}
    (comparison,) = compare_runs(base, cur)
    assert comparison.instructions_ratio == pytest.approx(1.2)
    paired = (10 / 13 * 11 / 14) ** 0.5  # the rounds paired: baseline / current per round
    assert comparison.speed.ratio == pytest.approx(paired)
    assert [f.check for f in evaluate([comparison], Policy()).regressions] == ["speed"]


def test_a_version_12_unmeasured_ab_case_stays_no_verdict(tmp_path):
    path = Path(write(tmp_path / "v12.json", run(case("w/infer[a=1]", None))))
    data = json.loads(path.read_text())
    data["schema_version"] = 12
    (c,) = data["cases"]
    del c["rounds"], c["instructions"], c["injected_slowdown"]
    c.update(status="skipped", reason="not measured: the time budget ran out",
             details={"ab_unmeasured": True})
    path.write_text(json.dumps(data))
    (read,) = load_run(path).cases
    assert read.rounds.out_of_time and read.rounds.medians_s == [] and read.details == {}
