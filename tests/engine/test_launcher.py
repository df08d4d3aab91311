"""One launcher interface (bench.launch.launcher): a local launcher forks CPU workers from
its fork servers or spawns them, runs a case's processes pooled, hands a sweep a future,
and closes only the servers it started; the sweep's one loop runs through any launcher."""

from __future__ import annotations

import dataclasses

import pytest

from bench.launch.fork_server import ForkServers
from bench.launch.launcher import LocalLauncher
from bench.orchestrate.sweep import run_suite
from bench.spec.model import Budget, CaseSpec
from tests.builders import FAULT_BUDGET, ScriptedLauncher, case, trials

pytestmark = pytest.mark.slow

SLEEP = CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 5.0},
                 Budget(**{**FAULT_BUDGET.to_dict(), "max_time_s": 0.5, "trial_time_s": 0.05}))


def test_a_local_launcher_forks_or_spawns_as_asked_and_pools_a_cases_processes():
    with LocalLauncher() as forking:
        forked = forking.run_once(SLEEP)
        pooled = forking.submit(dataclasses.replace(
            SLEEP, budget=dataclasses.replace(SLEEP.budget, processes=2))).result()
        servers = forking.servers
        assert servers._servers  # its own, started on first use
    assert not servers._servers  # closed with the launcher
    with LocalLauncher(fork=False) as spawning:
        spawned = spawning.run_once(SLEEP)
    for result in (forked, pooled, spawned):
        assert result.measured, (result.status, result.reason, result.stderr_tail)
    assert forked.worker["started"].startswith("forked")
    assert spawned.worker["started"].startswith("spawned")
    assert len(pooled.rounds.medians_s) == 2 and len(set(pooled.details["process_pids"])) == 2


def test_a_launcher_leaves_servers_it_was_given_to_their_owner():
    with ForkServers() as servers:
        with LocalLauncher(servers=servers) as launcher:
            assert launcher.run_once(SLEEP).worker["started"].startswith("forked")
        assert servers._servers  # still the owner's to close


def test_the_sweep_runs_through_any_launcher_and_records_what_it_lost(write_suite, tmp_path):
    """The sweep's one loop (local and Ray alike) over a launcher: the cases in suite
    order, an identical configuration measured once, and a case the launcher lost (its
    future raised) a crash with the reason, not a traceback that ends the sweep."""
    calls = []

    def worker(spec):  # noqa: ANN001, ANN202
        calls.append(spec.case_id)
        if spec.label == "lost":
            raise ConnectionError("the node went away")
        return case(spec.case_id, trials(0.01))

    suite = write_suite("".join(f'[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n'
                                f'label = "{label}"\nparams = {{ sleep_ms = {ms} }}\n'
                                for label, ms in (("a", 1.0), ("lost", 2.0), ("again", 1.0))))
    store = run_suite(suite, tmp_path / "run.json", progress=False,
                      launcher=ScriptedLauncher(worker))
    a, lost, again = store.record.cases
    assert calls == ["sleep/infer:a[]", "sleep/infer:lost[]"]
    assert (a.status, lost.status, again.status) == ("ok", "crashed", "ok")
    assert "ConnectionError: the node went away" in lost.reason
    assert again.details["measured_as"] == a.case_id
