"""A gate that cannot be fooled. Each test reproduces one way a hostile or
unlucky user got a wrong verdict, a traceback or a lost case, through the CLI where it can."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.cli import main
from bench.results.schema import RoundsResult, RunInfo, RunRecord
from bench.results.store import json_safe
from tests.builders import FINGERPRINT, case, run, trials, write

REPO = Path(__file__).resolve().parents[2]


def gate(capsys, base: RunRecord, cur: RunRecord, tmp_path, *extra: str,
         policy: str | None = None) -> tuple[int, str]:
    args = ["gate", "--baseline", write(tmp_path / "b.json", base),
            "--current", write(tmp_path / "c.json", cur), *extra]
    if policy is not None:
        (tmp_path / "p.toml").write_text(policy)
        args += ["--policy", str(tmp_path / "p.toml")]
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def slow_run(factor: float = 10.0, n: int = 20) -> RunRecord:
    return run(case("w/infer[a=1]", trials(0.1 * factor, n=n, seed=2)))


BASE = run(case("w/infer[a=1]", trials(0.1, seed=1)))


# 1. Wrong verdicts -------------------------------------------------------------------

def test_gate_does_not_pass_a_10x_slowdown_measured_in_one_trial(tmp_path, capsys):
    code, out = gate(capsys, BASE, slow_run(n=1), tmp_path)
    assert code == 1, out
    assert "Mann-Whitney cannot reach p < 0.05" in out and "at least 4 trials" in out


def test_gate_refuses_a_nan_trial_mean(tmp_path, capsys):
    cur = slow_run()
    cur.cases[0].timing.trial_means_s[3] = math.nan
    code, out = gate(capsys, BASE, cur, tmp_path)
    assert code == 2 and "trial_means_s[3]" in out, out


@pytest.mark.parametrize("field", ["timing", "throughput_and_timing"])
def test_gate_does_not_pass_a_case_without_timing(tmp_path, capsys, field):
    cur = slow_run()
    cur.cases[0].timing = None
    cur.cases[0].throughput = None
    code, out = gate(capsys, BASE, cur, tmp_path)
    assert code == 1 and "no timing" in out, out


def test_gate_does_not_pass_a_nan_task_metric(tmp_path, capsys):
    cur = run(case("w/infer[a=1]", trials(0.1, seed=2), accuracy=math.nan))
    code, out = gate(capsys, BASE, cur, tmp_path)
    assert code == 1 and "acc" in out and "Cannot judge" in out, out


def test_gate_does_not_pass_against_an_empty_baseline(tmp_path, capsys):
    code, out = gate(capsys, run(), slow_run(), tmp_path)
    assert code == 1 and "baseline has no measured case" in out, out


def test_gate_refuses_unknown_statuses(tmp_path, capsys):
    base = run(case("w/infer[a=1]", trials(0.1, seed=1), status="mystery"))
    code, out = gate(capsys, base, slow_run(), tmp_path)
    assert code == 2 and "unknown status 'mystery'" in out, out


@pytest.mark.parametrize("policy", ["[speed]\nmax_drop = nan\n", "[speed]\nmax_drop = inf\n",
                                    "[speed]\nalpha = 0\n", "[speed]\nmax_drop = 1.5\n",
                                    "[accuracy]\nmin_ratio = nan\n"])
def test_gate_refuses_a_non_finite_or_out_of_range_policy(tmp_path, capsys, policy):
    code, out = gate(capsys, BASE, slow_run(), tmp_path, policy=policy)
    assert code == 2 and "out of range" in out and len(out.strip().splitlines()) == 1, out


def test_two_trials_per_side_cannot_pass_a_34_percent_slowdown(tmp_path, capsys, write_suite):
    code, out = gate(capsys, run(case("w/infer[a=1]", [0.100, 0.101])),
                     run(case("w/infer[a=1]", [0.134, 0.135])), tmp_path)
    assert code == 1 and "smallest p 0.333" in out, out
    # ... and a suite cannot ask for a budget too small to reach a verdict.
    suite = write_suite('[budget]\nmin_trials = 2\n[[benchmark]]\nworkload = "sleep"\n'
                        'phase = "infer"\n')
    assert main(["list", str(suite)]) == 2
    assert "min_trials: 2 trials cannot reach a verdict" in capsys.readouterr().err


# 2. Diverged training ------------------------------------------------------------------

DIVERGING = """
[budget]
min_trials = 4
max_trials = 4
trial_time_s = 0.01
warmup_max_s = 0.1
max_time_s = 0.5
[[benchmark]]
workload = "linreg"
phase = "train"
params = { lr = 1e6, epochs = 3 }
accuracy = { val_mse = { max = 1.0 } }
"""


@pytest.mark.slow
def test_diverged_training_gets_its_status_and_every_reader_handles_it(write_suite,
                                                                       tmp_path, capsys):
    out = tmp_path / "run.json"
    # A diverged case fails the run (exit 1), with or without --allow-missed-targets.
    assert main(["run", str(write_suite(DIVERGING)), "--out", str(out), "--no-progress",
                 "--quiet", "--allow-missed-targets"]) == 1
    data = json.loads(out.read_text())
    (only,) = data["cases"]
    assert only["status"] == "diverged", only["reason"]
    assert "val_mse=nan" in only["reason"] and "optimizer step" in only["reason"]
    assert only["accuracy"]["passed"] is False  # NaN never passes a bound
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "diverged" in capsys.readouterr().out
    assert main(["report", str(out), "--html", str(tmp_path / "r.html")]) == 0
    assert main(["compare", str(out), str(out)]) == 0
    # A diverged current run against an ok baseline is a regression.
    ok = json.loads(out.read_text())
    ok["cases"][0]["status"] = "ok"
    ok["cases"][0]["accuracy"]["metrics"] = {"val_mse": 0.01, "slope": 2.0, "intercept": 0.0}
    (tmp_path / "ok.json").write_text(json.dumps(ok))
    assert main(["gate", "--baseline", str(tmp_path / "ok.json"), "--current", str(out)]) == 1
    assert "ok -> diverged" in capsys.readouterr().out


def test_nan_never_passes_an_accuracy_bound():
    from bench.spec.model import AccuracyTarget

    assert AccuracyTarget("m", min=0.5).check(math.nan) is False
    assert AccuracyTarget("m", max=0.5).check(math.nan) is False
    assert AccuracyTarget("m", max=0.5).check(math.inf) is False


# 3. bench ab refs ------------------------------------------------------------------------

def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def test_a_baseline_commit_without_the_bench_package_is_refused(tmp_path):
    from bench.errors import BenchInputError
    from bench.orchestrate.interleave import git_worktree

    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    (repo / "README").write_text("no bench here\n")
    _git("add", "README", cwd=repo)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=repo)
    with pytest.raises(BenchInputError, match="holds no bench package"), \
            git_worktree("HEAD", repo):
        pass
    assert "README" not in _git("worktree", "list", cwd=repo).replace(str(repo), "")
    assert len(_git("worktree", "list", cwd=repo).splitlines()) == 1  # removed again


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout")
def test_a_ref_that_looks_like_an_option_is_not_handed_to_git(tmp_path, capsys, write_suite):
    suite = str(write_suite('[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n'))
    assert main(["ab", suite, "--baseline-ref=--lock", "--out-dir", str(tmp_path)]) == 2
    assert "'--lock' is not a commit" in capsys.readouterr().err
    # No locked checkout was added (other tests' own checkouts may come and go meanwhile).
    assert "locked" not in _git("worktree", "list", "--porcelain", cwd=REPO)


def _paired(source_a: str, source_b: str, env_b: dict | None = None) -> tuple[RunRecord, ...]:
    records = []
    for side, source, env in (("baseline", source_a, {}), ("current", source_b, env_b or {})):
        c = case("w/infer[a=1]", trials(0.1, seed=len(records)))
        c.worker = {"bench_source": source_b}  # what the workers really imported
        c.rounds = RoundsResult(trials(0.1, n=6, seed=len(records)))
        records.append(RunRecord(RunInfo("r", "s", "s.toml", "0", "now", [], {},
                                         {"session": "s1", "side": side, "source": source,
                                          "env": env}), FINGERPRINT, [c]))
    return tuple(records)


def test_gate_refuses_an_ab_session_whose_sides_ran_the_same_code(tmp_path, capsys):
    base, cur = _paired("/tmp/baseline-tree", "/work/this")
    code, out = gate(capsys, base, cur, tmp_path)
    assert code == 2 and "worker ran the bench package at /work/this" in out, out
    base, cur = _paired("/work/this", "/work/this")
    code, out = gate(capsys, base, cur, tmp_path)
    assert code == 2 and "compares the code with itself" in out, out


# 4. Workers never import bench from the working directory --------------------------------

@pytest.mark.slow
def test_a_bench_folder_in_the_working_directory_is_not_imported(tmp_path, monkeypatch):
    from bench.launch.isolation import run_isolated
    from bench.spec.model import Budget, CaseSpec

    fake = tmp_path / "bench" / "runners"
    fake.mkdir(parents=True)
    (tmp_path / "bench" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "worker.py").write_text("import sys\nopen(sys.argv[2], 'w').write('{}')\n"
                                    "open('FAKE_RAN', 'w').write('yes')\n")
    monkeypatch.chdir(tmp_path)
    budget = Budget(min_trials=4, max_trials=4, trial_time_s=0.01, warmup_max_s=0.05,
                    max_time_s=0.3, timeout_s=60)
    result = run_isolated(CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 1.0},
                                   budget))
    assert not (tmp_path / "FAKE_RAN").exists()
    assert result.worker["bench_source"] == str(REPO)


# 5-7. Suite files ------------------------------------------------------------------------

SLEEP = '[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n'


@pytest.mark.parametrize("budget, key", [
    ("memory_limit_mib = nan", "budget.memory_limit_mib"),
    ("timeout_s = inf", "budget.timeout_s"),
    ("timeout_s = 0", "budget.timeout_s"),
    ("timeout_s = nan", "budget.timeout_s"),
    ("max_time_s = -1.0", "budget.max_time_s"),
    ("target_rel_ci = 0", "budget.target_rel_ci"),
])
def test_non_finite_zero_and_negative_budgets_are_refused(write_suite, capsys, budget, key):
    assert main(["list", str(write_suite(f"[budget]\n{budget}\n{SLEEP}"))]) == 2
    err = capsys.readouterr().err
    assert key in err and len(err.strip().splitlines()) == 1, err


def test_accuracy_min_above_max_is_refused(write_suite, capsys):
    suite = write_suite('[[benchmark]]\nworkload = "linreg"\nphase = "train"\n'
                        'accuracy = { val_mse = { min = 0.5, max = 0.1 } }\n')
    assert main(["list", str(suite)]) == 2
    assert "min 0.5 is above max 0.1" in capsys.readouterr().err


def test_a_million_case_suite_is_refused_before_it_is_expanded(write_suite, capsys):
    values = ", ".join(str(i) for i in range(1, 1001))
    suite = write_suite(f'[[benchmark]]\nworkload = "linreg"\nphase = "train"\n'
                        f'matrix = {{ batch_size = [{values}], threads = [{values}] }}\n')
    started = time.perf_counter()
    assert main(["list", str(suite)]) == 2
    assert time.perf_counter() - started < 10
    assert "1,000,000 cases, above the limit of 10,000" in capsys.readouterr().err
    raised = suite.read_text().replace("[[benchmark]]", "[suite]\nmax_cases = 1000000\n"
                                       "[[benchmark]]", 1)
    suite.write_text(raised.replace(f"threads = [{values}]", "threads = [0]"))
    assert main(["list", str(suite)]) == 0


def test_deep_nesting_is_refused(write_suite, tmp_path, capsys):
    suite = write_suite("x = " + "[" * 500 + "]" * 500 + "\n")
    assert main(["list", str(suite)]) == 2
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    assert main(["report", str(deep)]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and len(err.strip().splitlines()) == 2, err


# 8. Result loader ------------------------------------------------------------------------

def _valid() -> dict:
    return json.loads(json.dumps(json_safe(slow_run().to_dict())))


def _mutated(**changes) -> dict:
    data = _valid()
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return data


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 4,
    "{\"schema\": \"bench.run\", \"x\": \"caf\xe9\"}".encode("latin-1"),
    json.dumps(_valid()).encode("utf-16"),
    json.dumps(_mutated(fingerprint=[])).encode(),
    json.dumps(_mutated(cases__0__timing__median_s="abc")).encode(),
    json.dumps(_mutated(cases__0__timing__trial_means_s="0.1,0.2")).encode(),
    json.dumps(_mutated(schema_version=True)).encode(),
    json.dumps(_mutated(schema_version=1.0)).encode(),
    json.dumps(_mutated(cases__0__accuracy__metrics={"acc": "high"})).encode(),
])
def test_hostile_result_files_are_one_line_exit_2(tmp_path, capsys, content):
    path = tmp_path / "hostile.json"
    path.write_bytes(content)
    for command in (["report", str(path)],
                    ["gate", "--baseline", write(tmp_path / "b.json", BASE), "--current",
                     str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("bench: error:") and len(err.strip().splitlines()) == 1, err


def test_non_regular_files_are_not_read(capsys):
    assert main(["report", "/dev/zero"]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_a_non_utf8_policy_is_one_line(tmp_path, capsys):
    code, out = gate(capsys, BASE, slow_run(), tmp_path, policy="[speed]\n# caf\xe9\n")
    (tmp_path / "p.toml").write_bytes(b"[speed]\n# caf\xe9\n")
    assert main(["gate", "--baseline", str(tmp_path / "b.json"), "--current",
                 str(tmp_path / "c.json"), "--policy", str(tmp_path / "p.toml")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


# 9. Unwritable --out ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_an_unwritable_out_is_one_line_and_the_old_file_stays(tmp_path, capsys, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out.html" if where == "under-a-file" else Path("/proc/bench/out.html")
    report = write(tmp_path / "r.json", BASE)
    assert main(["report", report, "--html", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: --html: cannot write") and \
        len(err.strip().splitlines()) == 1, err
    assert blocker.read_text() == "x"


# 12-13. Files ----------------------------------------------------------------------------

def test_result_files_get_the_umask_mode(tmp_path):
    from bench.results.store import write_atomically

    old = os.umask(0o022)
    try:
        write_atomically(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_a_second_writer_of_one_out_is_refused(write_suite, tmp_path, capsys):
    from bench.results.store import exclusive_output

    out = tmp_path / "run.json"
    suite = str(write_suite(SLEEP))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom bench.results.store import exclusive_output\n"
        f"with exclusive_output({str(out)!r}):\n    print('locked', flush=True)\n"
        "    time.sleep(30)\n")], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", suite, "--out", str(out), "--overwrite", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"another bench process is writing this result file (pid {holder.pid})" in err
    finally:
        holder.kill()
        holder.wait()
    with exclusive_output(out):  # the kernel dropped the dead holder's lock
        pass


# 14. Injected slowdowns are never silent ------------------------------------------------

def test_an_injected_slowdown_is_shown_and_refused_by_the_gate(tmp_path, capsys):
    cur = slow_run(1.1)
    cur.cases[0].injected_slowdown = 0.1
    code, out = gate(capsys, BASE, cur, tmp_path)
    assert code == 2 and "injected slowdown" in out and "--allow-injected-slowdown" in out
    code, out = gate(capsys, BASE, cur, tmp_path, "--allow-injected-slowdown")
    assert code == 1 and "speed x0.9" in out, out
    assert main(["report", str(tmp_path / "c.json")]) == 0
    assert "INJECTED SLOWDOWN +10%" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "b.json"), str(tmp_path / "c.json")]) == 0
    assert "current: injected slowdown +10%" in capsys.readouterr().out


# 15. Contention --------------------------------------------------------------------------

@pytest.mark.alone
@pytest.mark.heavy
@pytest.mark.slow
def test_a_case_timed_beside_spinning_processes_is_contended(tmp_path, capsys):
    """End to end (make test-heavy, which runs alone): real spinners make a real case
    contended. The verdict itself is tested on scripted /proc/stat readings
    (test_interference.py)."""
    from bench.launch.isolation import run_isolated
    from bench.spec.model import Budget, CaseSpec

    budget = Budget(min_trials=4, max_trials=8, trial_time_s=0.1, warmup_max_s=0.2,
                    max_time_s=1.5, timeout_s=120)
    spec = CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 2.0}, budget)
    spin = "import os\nos.nice(19)\nwhile True: pass\n"
    spinners = [subprocess.Popen([sys.executable, "-c", spin])
                for _ in range(psutil.cpu_count())]
    try:
        time.sleep(0.5)
        busy = run_isolated(spec)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    alone = run_isolated(spec)
    assert busy.status == "contended", busy.reason
    assert busy.interference.others_share > 0.3 and busy.timing is not None
    assert alone.measured, alone.reason  # host steal alone may still mark it contended
    assert alone.interference.others_share < 0.1
    # Shown in the report. As a baseline it can hide a slowdown: the gate cannot pass the
    # quiet run against it (no verdict, exit 3), it could only find a regression that
    # contention cannot explain (exit 1).
    base, cur = run(dataclasses.replace(busy)), run(dataclasses.replace(alone))
    code, out = gate(capsys, base, cur, tmp_path)
    assert code in (1, 3) and "PASS" not in out
    assert "| contended | the baseline case was timed while other" in out or \
        "### Regressions" in out
    assert main(["report", str(tmp_path / "b.json")]) == 0
    assert "contended: other processes used" in capsys.readouterr().out


# 16. Machine identity --------------------------------------------------------------------

def test_two_cpu_kinds_under_one_model_string_are_two_machines(tmp_path, capsys):
    from bench.measurement.fingerprint import machine_name

    avx2 = {**FINGERPRINT, "torch_config": {"cpu_capability": "AVX2"}}
    avx512 = {**FINGERPRINT, "torch_config": {"cpu_capability": "AVX512"}}
    base = run(case("w/infer[a=1]", trials(0.1, seed=1)), fingerprint=avx2)
    cur = run(case("w/infer[a=1]", trials(0.1, seed=2)), fingerprint=avx512)
    code, out = gate(capsys, base, cur, tmp_path)
    assert code == 2 and "torch_config.cpu_capability: 'AVX2' vs 'AVX512'" in out
    assert machine_name(avx2) != machine_name(avx512)
    assert main(["table", str(tmp_path / "b.json"), str(tmp_path / "c.json")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "AVX2" in header and "AVX512" in header


def test_the_fingerprint_records_the_isa_and_cpu_numbers():
    from bench.measurement.fingerprint import fingerprint

    fp = fingerprint()
    assert fp["torch_config"]["cpu_capability"]
    if Path("/proc/cpuinfo").exists() and "cpu family" in Path("/proc/cpuinfo").read_text():
        assert isinstance(fp["cpu"]["family"], int)
        assert isinstance(fp["cpu"]["model_number"], int)


def _scripted_ab(write_suite, tmp_path, monkeypatch, statuses, slowdown=1.0, rounds=3,
                 cases=1, time_budget_s=None, step_s=0.0):
    """bench ab's rounds over scripted workers: each call takes the next status; the
    current side's steps take ``slowdown`` x the baseline's."""
    from bench.launch.isolation import WorkerCode
    from bench.launch.launcher import LocalLauncher
    from bench.orchestrate import interleave
    from bench.orchestrate import rounds as round_runner
    from bench.results.schema import ThroughputResult

    script = iter(statuses)
    calls = []

    def fake_run(self, spec, *args, **kwargs):  # noqa: ANN001, ANN202
        code = self.code
        calls.append((code.env["SIDE"], spec.probe))
        time.sleep(step_s)
        scale = slowdown if code.env["SIDE"] == "current" else 1.0
        result = case(spec.case_id, trials(0.01 * scale, n=5, seed=len(calls)))
        result.throughput = ThroughputResult.from_timing(result.timing, 1, "samples/s")
        result.status = next(script, "ok")
        if result.status == "contended":
            result.reason = "steal 31% (contended above 10%)"
        return result

    monkeypatch.setattr(LocalLauncher, "run_once", fake_run)
    suite = write_suite("".join('[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n'
                                + (f'label = "s{i}"\n' if i else "") for i in range(cases)))
    sides = [interleave.Side(n, WorkerCode(REPO, {"SIDE": n})) for n in ("baseline", "current")]
    stopping = round_runner.Stopping(rounds=rounds, max_rounds=rounds,
                                     time_budget_s=time_budget_s)
    # One side after the other, so the script's statuses fall to the sides in order (the
    # lockstep round's threads would take them in either order).
    base, cur = interleave.run_interleaved(suite, sides, stopping, tmp_path, lockstep=False)
    return base, cur, calls


def test_ab_rounds_timed_under_contention_are_left_out_and_the_clean_ones_pair(
        write_suite, tmp_path, monkeypatch):
    """A round pair with a contended side is left out of the pairing (not retried in place
    or kept): the case runs on until it has its clean rounds, the first clean round takes
    the task metrics, and the record says how many pairs were left out and why."""
    base, cur, calls = _scripted_ab(write_suite, tmp_path, monkeypatch,
                                    ["ok", "contended", "ok", "ok", "contended", "ok"])
    assert len(calls) == 2 * 5  # 3 clean rounds and 2 left out
    # The first round was contended: the next, the first clean one, is run full too.
    assert [probe for _, probe in calls] == [False] * 4 + [True] * 6
    for record in (base, cur):
        (merged,) = record.cases
        assert merged.status == "ok" and len(merged.rounds.medians_s) == 3
        assert merged.rounds.left_out == 2
        assert merged.rounds.left_out_reasons == [
            "current: steal 31% (contended above 10%)",  # round 1: baseline ran first
            "baseline: steal 31% (contended above 10%)"]  # round 3: current ran first


def test_ab_on_a_host_contended_throughout_is_no_verdict_never_a_pass_or_a_failure(
        write_suite, tmp_path, monkeypatch, capsys):
    """Every round contended: the case stops after as many left-out pairs as it may keep
    rounds, its contended rounds stand (marked contended), and the gate says the host was
    too noisy to decide speed (exit 3), for an unchanged current side and a slower one
    alike: contention cannot tell them apart. (Before: a KeyError on ab_rounds.)"""
    from bench.reports.gate import EXIT_NOISY

    for slowdown in (1.0, 1.3):
        base, cur, calls = _scripted_ab(write_suite, tmp_path / str(slowdown), monkeypatch,
                                        ["contended"] * 100, slowdown)
        assert len(calls) == 2 * 3  # as many pairs left out as it may keep (max_rounds)
        for record in (base, cur):
            (merged,) = record.cases
            assert merged.status == "contended" and len(merged.rounds.medians_s) == 3
        code, out = gate(capsys, base, cur, tmp_path / str(slowdown))
        assert code == EXIT_NOISY, out
        assert "NO VERDICT" in out and "timed while other processes used the CPU" in out


def test_a_case_the_time_budget_never_reached_is_no_verdict_never_a_pass(
        write_suite, tmp_path, monkeypatch, capsys):
    """The session's time ran out during the first case's round: the second case was never
    measured. It is in both files as skipped, saying why, and the gate gives it no verdict
    (before: absent from both files, the gate could pass the session on the first alone)."""
    base, cur, calls = _scripted_ab(write_suite, tmp_path, monkeypatch, [], cases=2,
                                    time_budget_s=0.05, step_s=0.1)
    assert len(calls) == 2
    for record in (base, cur):
        unmeasured = record.cases[1]
        assert unmeasured.status == "skipped" and unmeasured.rounds.out_of_time
        assert "time budget ran out before its first round" in unmeasured.reason
    from bench.reports.compare import compare_runs
    from bench.reports.gate import Policy, evaluate

    report = evaluate(compare_runs(base, cur), Policy())
    (finding,) = [f for f in report.inconclusive if f.case_id == cur.cases[1].case_id]
    assert finding.noise and "time budget ran out before its first round" in finding.text
    # (the first case, one round in, cannot reach p < 0.05 either: exit 1 for it)
    code, out = gate(capsys, base, cur, tmp_path)
    assert code != 0 and "PASS" not in out, out


def test_too_few_clean_ab_rounds_say_how_many_pairs_were_left_out(write_suite, tmp_path,
                                                                 monkeypatch, capsys):
    """Clean rounds too few for the sequential test (2 of the 3 it needs): inconclusive,
    a noise verdict (exit 3) whose reason names the contended pairs left out."""
    statuses = ["ok", "ok"] + ["contended", "ok"] * 100  # round 1 clean, then contended
    base, cur, _ = _scripted_ab(write_suite, tmp_path, monkeypatch, statuses, rounds=3)
    (merged,) = cur.cases
    assert len(merged.rounds.medians_s) < 3 and merged.rounds.left_out == 3
    code, out = gate(capsys, base, cur, tmp_path)
    assert code == 3, out
    assert "3 contended round pairs left out" in out and "steal 31%" in out


def _tmpfs(path: Path, options: str) -> None:
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs mounted for the test."""
    _tmpfs(tmp_path / "tiny", "size=64k")
    try:
        yield tmp_path / "tiny"
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "tiny")], capture_output=True)


def test_a_read_only_directory_is_one_line(tmp_path, write_suite, capsys):
    _tmpfs(tmp_path / "ro", "ro,size=64k")  # root writes through file modes, not this
    try:
        code = main(["run", str(write_suite(SLEEP)), "--out", str(tmp_path / "ro" / "r.json"),
                     "--no-progress"])
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "ro")], capture_output=True)
    err = capsys.readouterr().err
    assert code == 2 and "Read-only file system" in err and len(err.splitlines()) == 1, err


def test_a_full_disk_is_one_line_and_the_old_file_stays(full_disk, write_suite, capsys):
    out = full_disk / "run.json"
    write(out, BASE)
    before = out.read_bytes()
    fd = os.open(full_disk / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x" * 512)
    os.close(fd)
    code = main(["run", str(write_suite(SLEEP)), "--out", str(out), "--overwrite",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--out: cannot write" in err and "No space left" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert out.read_bytes() == before
    assert sorted(p.name for p in full_disk.iterdir()) == [".run.json.lock", "filler",
                                                           "run.json"]


def test_the_peak_cache_is_written_through_a_unique_temporary_file(tmp_path, monkeypatch):
    from bench.measurement import flops

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(flops, "_time_matmul", lambda device, dtype: (1.5, "test"))
    (tmp_path / "peak_tflops.tmp").mkdir()  # a fixed temporary name would collide here
    assert flops.measured_peak("cpu", "fp32") == (1.5, "test")
    assert flops.measured_peak("cpu", "fp32") == (1.5, "test (cached)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peak_tflops.json",
                                                          "peak_tflops.tmp"]
