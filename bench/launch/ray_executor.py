"""``bench run --executor ray``: a sweep's cases fanned out over a Ray cluster.

Each case is one Ray task that runs the case exactly as the local sweep does (a local
launcher: its own isolated worker process, bench.launch.isolation) on the node Ray picks,
and returns the record; the sweep (bench.orchestrate.sweep, the same loop as a local
sweep) appends each record to the result file as it finishes, so a sweep cut off keeps
what finished and ``--resume`` submits the rest. Two timed cases never share a
machine: a CPU case holds the node's whole ``bench_node`` resource (1 per node: start
each node with ``ray start --resources '{"bench_node": 1}'``; a local Ray started here
gets it), a CUDA case one GPU per rank. Identical configurations are measured once, as
in the local sweep. Install with ``pip install 'bench-suite[ray]'``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from concurrent.futures import Future
from typing import Any

from bench.extras import require
from bench.launch.launcher import Launcher, LocalLauncher
from bench.results.schema import CaseResult
from bench.spec.model import CaseSpec
from bench.typed import from_dict

NODE_RESOURCE = "bench_node"


def _ray() -> Any:
    require("ray", "--executor")
    import ray  # the optional extra bench-suite[ray], checked just above

    return ray


# Ray sets these in its workers (OMP_NUM_THREADS=1 for a task of fewer CPUs): the case's
# worker gets the driver's values back, so it runs with the threads a local sweep gives it.
RAY_SET_ENV = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def _run_on_node(case_data: dict[str, Any], driver_env: dict[str, str | None]) -> dict[str, Any]:
    """The Ray task: one case, isolated as locally, on this node."""
    for name in RAY_SET_ENV:
        if name == "CUDA_VISIBLE_DEVICES" and case_data.get("axes", {}).get("device") == "cuda":
            continue  # the GPUs Ray gave this task
        if driver_env.get(name) is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = driver_env[name]
    with LocalLauncher() as launcher:
        result = launcher.run_case(CaseSpec.from_dict(case_data))
    result.worker = {**(result.worker or {}), "host": socket.gethostname(),
                     "executor": "ray task"}
    return dataclasses.asdict(result)


def _resources(case: CaseSpec) -> dict[str, Any]:
    if case.device == "cuda":
        return {"num_cpus": 1, "num_gpus": max(1, case.world_size)}
    return {"num_cpus": 0, "resources": {NODE_RESOURCE: 1}}


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """A Ray to submit to: the cluster at ``address``, else a local one holding this
    machine as one node."""
    ray = _ray()
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, resources={NODE_RESOURCE: 1}, log_to_driver=False,
                     include_dashboard=False)
    return ray


class RayLauncher(Launcher):
    """Each case a Ray task on the cluster at ``address`` (a local one without), run there
    by a LocalLauncher; ``submit`` returns at once, so a sweep keeps every node busy."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.ray = connect(address)
        self.task = self.ray.remote(max_retries=0)(_run_on_node)
        self.driver_env = {name: os.environ.get(name) for name in RAY_SET_ENV}

    def submit(self, case: CaseSpec) -> Future[CaseResult]:
        ref = self.task.options(**_resources(case)).remote(case.to_dict(), self.driver_env)
        records: Future[CaseResult] = Future()

        def done(raw: Future[Any]) -> None:
            try:
                records.set_result(from_dict(CaseResult, raw.result()))
            except BaseException as exc:  # a task Ray lost: the sweep records it crashed
                records.set_exception(exc)

        ref.future().add_done_callback(done)
        return records

    def run_case(self, case: CaseSpec) -> CaseResult:
        return self.submit(case).result()
