"""The contention verdict as a pure function of two /proc/stat readings and the
case's own CPU time (no spinning processes, no quiet machine needed), and the budget's
``contended_above`` from the suite file to the worker."""

from __future__ import annotations

import pytest

from bench.errors import BenchInputError
from bench.launch.isolation import run_isolated
from bench.measurement.interference import CONTENDED_SHARE, interference
from bench.results.migrations import case_for_worker
from bench.results.schema import SCHEMA_VERSION
from bench.spec.model import Budget, CaseSpec

HZ = 100


def verdict(busy: int, steal: int, total: int, own_cpu_s: float, threshold=CONTENDED_SHARE,
            cores: int = 2, wall_s: float = 1.0):
    """Readings of a window of ``total`` jiffies (2 cores x 100 Hz x wall)."""
    start = (1_000, 50, 10_000)
    end = (start[0] + busy, start[1] + steal, start[2] + total)
    return interference(start, end, own_cpu_s, wall_s, cores, 2, threshold, HZ)


def test_a_case_alone_with_the_daemons_of_an_idle_vm_is_not_contended():
    # 1 s on 2 cores: the case used 1.0 CPU-s, daemons 5 jiffies (2.5% of the machine).
    r = verdict(busy=105, steal=0, total=200, own_cpu_s=1.0)
    assert not r.contended and r.others_share == pytest.approx(0.025)
    assert r.own_cpu_per_thread == pytest.approx(0.5) and r.threshold == CONTENDED_SHARE


def test_a_process_spinning_beside_the_case_makes_it_contended():
    r = verdict(busy=200, steal=0, total=200, own_cpu_s=1.0)
    assert r.contended and r.others_share == pytest.approx(0.5)
    assert r.others_cpu_s == pytest.approx(1.0)


def test_hypervisor_steal_alone_makes_it_contended():
    r = verdict(busy=100, steal=40, total=200, own_cpu_s=1.0)
    assert r.contended and r.steal_share == pytest.approx(0.2) and r.others_share == 0


def test_counter_rounding_of_a_short_window_is_not_contention():
    # 50 ms: 10 jiffies in all; 3 jiffies unexplained are within the 2 x cores + 2 slack.
    r = verdict(busy=8, steal=3, total=10, own_cpu_s=0.05, wall_s=0.05)
    assert not r.contended and r.others_share == pytest.approx(0.3)


def test_the_threshold_is_the_budgets_and_one_never_marks_a_case():
    spinning = dict(busy=200, steal=0, total=200, own_cpu_s=1.0)
    assert verdict(**spinning, threshold=0.6).contended is False
    assert verdict(**spinning, threshold=0.4).contended is True
    everything = dict(busy=200, steal=200, total=400, own_cpu_s=0.0)
    assert verdict(**everything, threshold=1.0).contended is False


def test_no_jiffy_is_no_verdict():
    assert verdict(busy=0, steal=0, total=0, own_cpu_s=0.0) is None


def test_contended_above_is_read_checked_and_downgraded_for_older_workers(write_suite):
    from bench.spec import load_suite

    suite = load_suite(write_suite('[budget]\ncontended_above = 1.0\n[[benchmark]]\n'
                                   'workload = "sleep"\nphase = "infer"\n'))
    assert suite.benchmarks[0].budget.contended_above == 1.0
    assert Budget().contended_above == CONTENDED_SHARE
    for bad in ("0", "1.5", '"high"'):
        with pytest.raises(BenchInputError, match="budget.contended_above") as info:
            load_suite(write_suite(f'[budget]\ncontended_above = {bad}\n[[benchmark]]\n'
                                   'workload = "sleep"\nphase = "infer"\n'))
        assert "\n" not in str(info.value)
    spec = CaseSpec("sleep", "infer", {"device": "cpu"}, {}, Budget(contended_above=1.0))
    older = case_for_worker(spec.to_dict(), SCHEMA_VERSION, 10)
    assert "contended_above" not in older["budget"]
    Budget(**older["budget"])  # what a version-10 worker builds


@pytest.mark.slow
def test_a_worker_marks_contention_at_its_budgets_threshold():
    """A real worker records the budget's threshold; at 1.0 no reading can exceed it, so
    the case is ok by construction, however busy the machine."""
    budget = Budget(min_trials=3, max_trials=3, max_time_s=0.3, trial_time_s=0.01,
                    warmup_max_s=0.05, timeout_s=60, contended_above=1.0)
    result = run_isolated(CaseSpec("sleep", "infer", {"device": "cpu"}, {"sleep_ms": 1.0},
                                   budget))
    assert result.status == "ok", (result.reason, result.stderr_tail)
    assert result.interference.threshold == 1.0
    assert result.budget["contended_above"] == 1.0


def test_bench_run_retry_contended_runs_a_contended_case_again(write_suite, tmp_path):
    """--retry-contended N: a case that came back contended runs again (here: clean the
    second time), up to N times; the record keeps the earlier runs' reasons."""
    from bench.orchestrate.sweep import run_suite
    from tests.builders import ScriptedLauncher, case, trials

    script = {"sleep/infer:a[]": ["contended", "ok"], "sleep/infer:b[]": ["contended"] * 3}
    calls = []

    def worker(spec):  # noqa: ANN001, ANN202
        calls.append(spec.case_id)
        result = case(spec.case_id, trials(0.01))
        result.status = script[spec.case_id].pop(0)
        result.reason = "steal 31%" if result.status == "contended" else None
        return result

    suite = write_suite("".join(f'[[benchmark]]\nworkload = "sleep"\nphase = "infer"\n'
                                f'label = "{label}"\nparams = {{ sleep_ms = {ms} }}\n'
                                for label, ms in (("a", 1.0), ("b", 2.0))))
    store = run_suite(suite, tmp_path / "run.json", progress=False,
                      launcher=ScriptedLauncher(worker),
                      retry_contended=1)
    a, b = store.record.cases
    assert calls == ["sleep/infer:a[]"] * 2 + ["sleep/infer:b[]"] * 2
    assert a.status == "ok" and a.details["contended_reruns"] == ["steal 31%"]
    assert b.status == "contended" and b.details["contended_reruns"] == ["steal 31%"]


PROBE_CHILD = """
import sys, psutil
from bench.measurement.interference import InterferenceProbe
with InterferenceProbe(1, root=psutil.Process().parent()) as probe:
    print("ready", flush=True)
    sys.stdin.readline()
print(probe.result.own_cpu_s if probe.result else "unreadable", flush=True)
"""
BURNER_CHILD = """
import sys, time
while time.process_time() < 0.5:
    pass
print("burnt", flush=True)
sys.stdin.readline()
"""


def test_a_probe_rooted_at_its_launcher_counts_a_sibling_rank_as_its_own_cpu():
    """A rank's probe (root: the launcher that started every rank) must not call its
    sibling rank another process. The sibling burns 0.5 CPU-s (process time: the same
    amount however loaded the host is) and stays alive past the probe's end, so only the
    root's process tree can count it."""
    import subprocess
    import sys

    pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    probe = subprocess.Popen([sys.executable, "-c", PROBE_CHILD], **pipes)
    burner = None
    try:
        assert probe.stdout.readline().strip() == "ready"
        burner = subprocess.Popen([sys.executable, "-c", BURNER_CHILD], **pipes)
        assert burner.stdout.readline().strip() == "burnt"
        own_cpu_s = probe.communicate("end\n", timeout=60)[0].strip()
    finally:
        probe.kill()
        if burner is not None:
            burner.communicate("", timeout=60)
    if own_cpu_s == "unreadable":
        pytest.skip("no /proc/stat here")
    assert float(own_cpu_s) >= 0.45  # psutil reads whole 10 ms clock ticks
