"""The workload contract, over every registered workload and phase: its smallest CPU case
(the workload's ``smoke_params``) loads from a suite file, prepares, steps and finishes,
and reports every metric it declares, the task metric among them. Expected names come
from the registry, never from a list here."""

from __future__ import annotations

import importlib
import math
import sys

import pytest

from bench import workloads
from bench.orchestrate.plan import plan_suite
from bench.spec import load_suite
from bench.variants.precision import get_precision
from bench.workloads import get_workload, workload_names
from bench.workloads.base import RunContext

CASES = [(name, phase) for name in workload_names() for phase in get_workload(name).phases]
# Workloads whose smallest case loads the SmolLM2 GGUF: 25-30 s of dequantizing on CI's cold
# cache, so their contract runs in make test-heavy (make test stays under 4 minutes).
GGUF_WORKLOADS = ("causal_lm", "smollm2")


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')


@pytest.mark.slow
@pytest.mark.parametrize("name, phase", [
    pytest.param(n, p, id=f"{n}-{p}", marks=[pytest.mark.heavy] if n in GGUF_WORKLOADS else [])
    for n, p in CASES])
def test_every_workload_runs_its_smallest_case_and_reports_its_metrics(name, phase,
                                                                       write_suite):
    run_smallest_case(name, phase, write_suite)


def run_smallest_case(name, phase, write_suite):  # noqa: ANN001, ANN201
    """The contract: load, plan, prepare, step, finish; every declared metric reported."""
    workload = get_workload(name)
    params = {k: v for k, v in workload.smoke_params.items()
              if k in workload.params() and (workload.params()[k].phases is None or
                                             phase in workload.params()[k].phases)}
    table = ", ".join(f"{k} = {_toml(v)}" for k, v in params.items())
    axes = "".join(f", {k} = [{_toml(v)}]" for k, v in workload.smoke_axes.items()
                   if k in workload.phase_axes(phase))
    suite = load_suite(write_suite(f'[[benchmark]]\nworkload = "{name}"\nphase = "{phase}"\n'
                                   f"params = {{ {table} }}\n"
                                   f'matrix = {{ device = ["cpu"]{axes} }}\n'))
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
    return case, outcome


TOY = '''
import torch

from bench.workloads import register
from bench.workloads.base import Outcome, Phase, Workload
from bench.spec.axes import Setting


class LeastSquaresPhase(Phase):
    step_description = "torch.linalg.lstsq of a fixed random system"

    def __init__(self, rows, ctx):
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(rows, 8, generator=generator)
        self.x = torch.randn(8, 1, generator=generator)
        self.b = self.a @ self.x
        self.ctx = ctx

    def session(self):
        return self.ctx.precision.context(self.ctx.device)

    def step(self):
        self.solution = torch.linalg.lstsq(self.a, self.b).solution
        return self.solution

    def finish(self):
        return Outcome(metrics={"error": float((self.solution - self.x).abs().max())})


@register
class ToyLeastSquares(Workload):
    name = "toy_least_squares"
    description = "a toy workload for a test: one module, nothing else"
    phases = ("infer",)
    smoke_params = {"rows": 64}

    @classmethod
    def params(cls):
        return {"rows": Setting("rows", int, 256, minimum=8)}

    @classmethod
    def metrics(cls, phase):
        return ("error",)

    @classmethod
    def task_metric(cls, phase):
        return ("error", False)

    @classmethod
    def prepare(cls, case, ctx):
        return LeastSquaresPhase(case.params["rows"], ctx)
'''


@pytest.fixture
def toy_workload(tmp_path, monkeypatch):
    (tmp_path / "toy_workload_module.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_workload_module")
    yield "toy_least_squares"
    workloads._REGISTRY.pop("toy_least_squares")
    sys.modules.pop(module.__name__, None)


def test_a_toy_workload_in_one_module_meets_the_contract(toy_workload, write_suite):
    assert toy_workload in workload_names()
    case, outcome = run_smallest_case(toy_workload, "infer", write_suite)
    assert outcome.metrics["error"] < 1e-3
    assert case.parity_reference == {"precision": "fp32"}  # its variant axes' defaults


PLUGIN_DIST = """Metadata-Version: 2.1
Name: toy-bench-plugin
Version: 0.1
"""


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution whose entry point (group bench.workloads) names the toy workload's
    module, as `pip install` of a plugin package would leave it."""
    (tmp_path / "toy_plugin_module.py").write_text(TOY.replace("toy_least_squares",
                                                               "toy_plugin"))
    info = tmp_path / "toy_bench_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(PLUGIN_DIST)
    (info / "entry_points.txt").write_text("[bench.workloads]\ntoy = toy_plugin_module\n"
                                           "broken = no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(workloads, "_loaded", False)
    yield "toy_plugin"
    workloads._REGISTRY.pop("toy_plugin", None)
    sys.modules.pop("toy_plugin_module", None)


def test_an_installed_plugin_registers_its_workload_and_a_broken_one_is_one_line(
        installed_plugin, write_suite, capsys):
    assert installed_plugin in workload_names()
    assert "workload plugin broken (no_such_module_anywhere) left out: " \
           "ModuleNotFoundError" in capsys.readouterr().err
    case, outcome = run_smallest_case(installed_plugin, "infer", write_suite)
    assert outcome.metrics["error"] < 1e-3 and case.workload == installed_plugin
