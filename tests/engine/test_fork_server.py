"""Workers forked from a fork server (bench.launch.fork_server) are workers like spawned
ones: the same figures, the same fault statuses, each in its own process; a server that
cannot start leaves the case to a spawned worker, said in the record."""

from __future__ import annotations

import os

import psutil
import pytest

from bench.launch.fork_server import ForkServers
from bench.launch.isolation import WorkerCode, run_isolated
from bench.spec.model import Budget, CaseSpec
from tests.builders import FAULT_BUDGET, ROUND_BUDGET, fault_case

pytestmark = pytest.mark.slow

SLEEP = CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 20.0},
                 Budget(**{**FAULT_BUDGET.to_dict(), "max_time_s": 1.0, "trial_time_s": 0.1}))


def test_a_forked_worker_times_a_known_sleep_in_a_fresh_process_each_round():
    with ForkServers() as servers:
        first = run_isolated(SLEEP, servers=servers)
        second = run_isolated(SLEEP, servers=servers)
        server_pid = next(iter(servers._servers.values())).pid
    for result in (first, second):
        assert result.measured, (result.status, result.reason, result.stderr_tail)
        # A sanity bound: a sleep never returns early, and on a loaded host it may wake late
        # (the timer's precision: scripted clocks in test_measurement.py).
        assert 0.020 <= result.timing.median_s <= 2 * 0.020 + 0.005
        assert result.worker["started"].startswith(f"forked by a fork server (pid {server_pid})")
        assert "torch" in result.worker["started"]
    assert len({first.worker["pid"], second.worker["pid"], server_pid, os.getpid()}) == 4
    assert not psutil.pid_exists(server_pid) or \
        psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE


def test_faults_in_a_forked_worker_are_statuses_and_the_server_goes_on():
    with ForkServers() as servers:
        hang = run_isolated(fault_case("hang", timeout_s=4), servers=servers)
        abort = run_isolated(fault_case("abort"), servers=servers)
        raised = run_isolated(fault_case("raise"), servers=servers)
        after = run_isolated(SLEEP, servers=servers)
    assert hang.status == "timeout" and "no result after 4 s" in hang.reason
    assert abort.status == "crashed" and abort.reason == "worker killed by SIGABRT"
    assert raised.status == "error" and raised.reason == "RuntimeError: injected failure"
    assert "diagnostics.py" in raised.stderr_tail
    assert after.measured and after.worker["started"].startswith("forked")


def test_a_server_that_cannot_start_leaves_the_case_to_a_spawned_worker(tmp_path):
    """A checkout whose worker module fails on import: refused once, with its reason."""
    broken = tmp_path / "src"
    (broken / "bench" / "runners").mkdir(parents=True)
    for init in ("bench/__init__.py", "bench/runners/__init__.py"):
        (broken / init).write_text("")
    (broken / "bench" / "runners" / "worker.py").write_text("raise ImportError('broken')\n")
    with ForkServers() as servers:
        assert servers.get(broken, {**os.environ, "PYTHONPATH": str(broken)}) is None
        assert "broken" in next(iter(servers.refused.values()))
        result = run_isolated(SLEEP, servers=servers)  # this checkout's server still starts
    assert result.worker["started"].startswith("forked")


def test_only_cpu_workers_are_forked():
    cuda = CaseSpec("sleep", "infer", {"device": "cuda"}, {"sleep_ms": 1.0}, FAULT_BUDGET)
    with ForkServers() as servers:
        result = run_isolated(cuda, WorkerCode.this_checkout(), servers)
        assert not servers._servers
    assert result.worker["started"].startswith("spawned") and "never forked" in \
        result.worker["started"]


def test_a_sweep_forks_each_workload_from_a_server_of_that_workloads_imports(write_suite,
                                                                             tmp_path):
    # A forked worker inherits only modules its own case imports, so its memory reads as a
    # spawned worker's (a gpt worker forked from a digits server would carry scikit-learn).
    from bench.orchestrate.sweep import run_suite


    suite = write_suite(ROUND_BUDGET + '[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n'
                        'params = { sleep_ms = 1.0 }\n'
                        '[[benchmark]]\nworkload = "linreg"\nphase = "train"\n'
                        'params = { epochs = 2 }\nmatrix = { batch_size = [32] }\n')
    record = run_suite(suite, tmp_path / "run.json").record
    started = {case.workload: case.worker["started"] for case in record.cases}
    assert all(s.startswith("forked by a fork server") for s in started.values()), started
    assert "bench.workloads.diagnostics" in started["sleep"]
    assert "bench.workloads.linreg" not in started["sleep"]
    assert "bench.workloads.linreg" in started["linreg"]
    assert "bench.workloads.diagnostics" not in started["linreg"]
    # torch._dynamo (70 MiB of heap) only where the case imports it anyway: its optimizer.
    assert "torch._dynamo" not in started["sleep"]
    assert "torch._dynamo" in started["linreg"]


TINY_MODEL = '''
{prelude}
import torch

from bench import UserModel


def build():
    torch.manual_seed(0)
    return UserModel(torch.nn.Linear(4, {outputs}),
                     lambda batch, seed: (torch.ones(batch, 4) * seed,))
'''


TINY_BUDGET = {"min_trials": 4, "max_trials": 4, "max_time_s": 0.3, "trial_time_s": 0.01,
               "warmup_max_s": 0.05, "timeout_s": 120}


def _user_model_folders(tmp_path):
    """Two modules named tiny in two folders (2 and 3 outputs), and one that starts a
    thread when imported."""
    folders = {name: tmp_path / name for name in ("two", "three", "threaded")}
    for folder in folders.values():
        folder.mkdir()
    (folders["two"] / "tiny.py").write_text(TINY_MODEL.format(prelude="", outputs=2))
    (folders["three"] / "tiny.py").write_text(TINY_MODEL.format(prelude="", outputs=3))
    (folders["threaded"] / "threaded.py").write_text(TINY_MODEL.format(
        prelude="import threading, time\nthreading.Thread(target=time.sleep, args=(600,), "
                "name='user-poller', daemon=True).start()", outputs=2))
    return folders


def _parameters(result) -> int:
    assert result.measured, (result.status, result.reason, result.stderr_tail)
    return result.model.parameters


def test_a_user_models_module_is_imported_by_its_own_fork_server(write_suite, tmp_path):
    from bench.orchestrate.sweep import run_suite


    folders = _user_model_folders(tmp_path)
    suite = write_suite(ROUND_BUDGET + "".join(
        f'[[benchmark]]\nlabel = "{label}"\nmodel = "{module}:build"\n'
        f'python_path = "{folders[label]}"\n'
        for label, module in (("two", "tiny"), ("three", "tiny"), ("threaded", "threaded"))))
    cases = {case.label: case for case in run_suite(suite, tmp_path / "run.json").record.cases}
    # The same module name from two folders: two servers, each with the case's own module.
    assert _parameters(cases["two"]) == 4 * 2 + 2
    assert _parameters(cases["three"]) == 4 * 3 + 3
    for label in ("two", "three"):
        started = cases[label].worker["started"]
        assert started.startswith("forked by a fork server"), started
        assert f"tiny@{folders[label]}" in started
    assert cases["two"].worker["started"] != cases["three"].worker["started"]
    # A module that starts a thread on import: no fork after it, the worker is spawned.
    started = cases["threaded"].worker["started"]
    assert _parameters(cases["threaded"]) == 10
    assert started.startswith("spawned") and "started Python threads (user-poller)" in started


def test_a_shared_server_never_hands_a_worker_another_folders_module(tmp_path):
    from bench.api import one_model_case

    folders = _user_model_folders(tmp_path)
    two, three = (one_model_case("tiny:build", python_path=folders[name],
                                   budget=TINY_BUDGET).spec
                  for name in ("two", "three"))
    with ForkServers() as servers:  # one server for both: it imports tiny once, from two/
        first = run_isolated(two, servers=servers)
        second = run_isolated(three, servers=servers)
        again = run_isolated(three, servers=servers)
    assert _parameters(first) == 10 and first.worker["started"].startswith("forked")
    assert _parameters(second) == 15 and _parameters(again) == 15
    for result in (second, again):
        assert result.worker["started"].startswith("spawned"), result.worker["started"]
        assert f"it had imported user modules from {folders['two']}, not from " \
            f"{folders['three']}" in result.worker["started"]
