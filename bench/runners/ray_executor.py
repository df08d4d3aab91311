"""``bench run --executor ray``: a sweep's cases fanned out over a Ray cluster.

Each case is one Ray task that runs the case exactly as the local sweep does (its own
isolated worker process, bench.runners.isolation) on the node Ray picks, and returns the
record; the driver appends each record to the result file as it finishes, so a sweep cut
off keeps what finished and ``--resume`` submits the rest. Two timed cases never share a
machine: a CPU case holds the node's whole ``bench_node`` resource (1 per node: start
each node with ``ray start --resources '{"bench_node": 1}'``; a local Ray started here
gets it), a CUDA case one GPU per rank. Identical configurations are measured once, as
in the local sweep. Install with ``pip install 'bench[ray]'``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from typing import Any

from tqdm import tqdm

from bench.errors import BenchInputError
from bench.results.schema import STATUS_CRASHED, STATUS_SKIPPED, CaseResult
from bench.results.store import ResultStore
from bench.runners.isolation import run_in_processes
from bench.runners.paired import shared_measurement
from bench.runners.plan import PlannedCase, skipped_result
from bench.spec.model import CaseSpec, measurement_key
from bench.typed import from_dict

NODE_RESOURCE = "bench_node"


def _ray() -> Any:
    try:
        import ray  # an optional extra: bench[ray]
    except ImportError:
        raise BenchInputError("--executor", "ray is not installed (pip install 'bench[ray]')",
                              valid="local, ray") from None
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
    result = run_in_processes(CaseSpec.from_dict(case_data))
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


def run_cases_on_ray(store: ResultStore, planned: list[PlannedCase], name: str,
                     progress: bool, address: str | None = None) -> None:
    """Every case of ``planned`` missing from ``store``, one Ray task each."""
    ray = connect(address)
    task = ray.remote(max_retries=0)(_run_on_node)
    done = store.completed_ids()
    todo = [p for p in planned if p.case_id not in done]
    measured = {measurement_key(c): c for c in store.record.cases if c.status != STATUS_SKIPPED}
    later: dict[str, list[CaseSpec]] = {}  # identical configurations waiting on a first
    pending: dict[Any, PlannedCase] = {}
    driver_env = {name: os.environ.get(name) for name in RAY_SET_ENV}
    bar = tqdm(total=len(todo), desc=f"{name} (ray)", unit="case", disable=not progress,
               file=sys.stderr)
    for case in todo:
        if case.skip_reason:
            store.append(skipped_result(case))
            bar.update()
            continue
        key = measurement_key(case.spec)
        if key in measured:
            store.append(shared_measurement(measured[key], case.spec))
            bar.update()
        elif key in later:
            later[key].append(case.spec)
        else:
            later[key] = []
            ref = task.options(**_resources(case.spec)).remote(case.spec.to_dict(), driver_env)
            pending[ref] = case
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        case = pending.pop(ready[0])
        try:
            result = from_dict(CaseResult, ray.get(ready[0]))
        except Exception as exc:  # noqa: BLE001 - a task Ray lost is the case's status
            result = CaseResult.for_case(case.spec, STATUS_CRASHED,
                                         f"the Ray task failed: {type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else ''}"[:500])
        store.append(result)
        bar.update()
        if result.status not in ("ok", "skipped"):
            bar.write(f"{result.status}: {result.case_id}: {result.reason}", file=sys.stderr)
        key = measurement_key(case.spec)
        measured[key] = result
        for spec in later.pop(key, []):
            store.append(shared_measurement(result, spec))
            bar.update()
    bar.close()
    order = {p.case_id: i for i, p in enumerate(planned)}  # the file in suite order, as locally
    store.record.cases.sort(key=lambda c: order.get(c.case_id, len(order)))
    store.flush()
