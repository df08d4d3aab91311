"""The workload contract, over every registered workload and phase: its smallest CPU case
(the workload's ``smoke_params``) loads from a suite file, prepares, steps and finishes,
and reports every metric it declares, the task metric among them. Expected names come
from the registry, never from a list here."""

from __future__ import annotations

import math

import pytest

from bench.runners.plan import plan_suite
from bench.spec import load_suite
from bench.variants.precision import get_precision
from bench.workloads import get_workload, workload_names
from bench.workloads.base import RunContext

CASES = [(name, phase) for name in workload_names() for phase in get_workload(name).phases]


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')


@pytest.mark.slow
@pytest.mark.parametrize("name, phase", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_every_workload_runs_its_smallest_case_and_reports_its_metrics(name, phase,
                                                                       write_suite):
    workload = get_workload(name)
    params = {k: v for k, v in workload.smoke_params.items()
              if k in workload.params() and (workload.params()[k].phases is None or
                                             phase in workload.params()[k].phases)}
    table = ", ".join(f"{k} = {_toml(v)}" for k, v in params.items())
    suite = load_suite(write_suite(f'[[benchmark]]\nworkload = "{name}"\nphase = "{phase}"\n'
                                   f"params = {{ {table} }}\n"
                                   'matrix = { device = ["cpu"] }\n'))
    planned = plan_suite(suite)[0]
    assert planned.skip_reason is None, planned.skip_reason
    case = planned.spec
    ctx = RunContext(device="cpu", precision=get_precision(case.axes.get("precision", "fp32")))
    prepared = workload.prepare(case, ctx)
    with prepared.session():
        for _ in range(2):
            prepared.step()
    outcome = prepared.finish()
    declared = set(workload.metrics(phase))
    assert declared <= set(outcome.metrics), declared - set(outcome.metrics)
    task = workload.task_metric(phase)
    if task is not None:
        assert task[0] in declared
        assert math.isfinite(outcome.metrics[task[0]])
    assert prepared.samples_per_step >= 1 and prepared.step_description
