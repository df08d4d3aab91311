"""`bench run --executor ray`: on a local Ray (this machine one node holding the
bench_node resource) a sweep writes the same cases as the default executor: each case
run in its own isolated worker by a Ray task, skipped cases and identical configurations
handled as locally, the torch threads a local worker gets, the file in suite order."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from tests.builders import QUICK_BUDGET, benchmark_text, suite_text

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SUITE = suite_text(
    benchmark_text("sleep", label="a", params="{ sleep_ms = 0.2 }"),
    benchmark_text("sleep", label="b", params="{ sleep_ms = 0.5 }"),
    benchmark_text("sleep", label="again", params="{ sleep_ms = 0.2 }"),
    benchmark_text("fault", "train", matrix='{ parallel = ["none"], world_size = [2] }'),
    name="ray", budget=QUICK_BUDGET)


def _cases(path) -> list[dict]:
    return json.loads(path.read_text())["cases"]


@pytest.mark.heavy
def test_a_sweep_on_ray_writes_the_cases_the_default_executor_writes(write_suite, tmp_path):
    import ray

    suite = write_suite(SUITE)
    local, on_ray = tmp_path / "local.json", tmp_path / "ray.json"
    assert main(["run", str(suite), "--out", str(local), "--quiet", "--no-progress"]) in (0, 1)
    try:
        ray.init(num_cpus=2, resources={"bench_node": 1}, include_dashboard=False,
                 log_to_driver=False)
        assert main(["run", str(suite), "--out", str(on_ray), "--executor", "ray", "--quiet",
                     "--no-progress"]) in (0, 1)
    finally:
        ray.shutdown()
    mine, theirs = _cases(local), _cases(on_ray)
    assert [c["case_id"] for c in theirs] == [c["case_id"] for c in mine]
    measured = {"ok", "contended"}
    for a, b in zip(mine, theirs, strict=True):
        assert (a["status"] in measured) == (b["status"] in measured), (a, b)
        assert (a["status"] == "skipped") == (b["status"] == "skipped")
        assert a["details"].get("measured_as") == b["details"].get("measured_as")
        if b["status"] in measured:
            assert b["worker"]["torch_threads"] == a["worker"]["torch_threads"]
    assert sum(c["worker"].get("executor") == "ray task" for c in theirs
               if "measured_as" not in c["details"]) == 2  # measured by Ray tasks: a and b
    assert theirs[2]["details"]["measured_as"] == "sleep/infer:a[]"
