"""A backend is one strategy class. A toy backend defined in a temporary module
(and nothing else) is offered by the backend axis, loads from a suite file and runs a
digits_cnn case through prepare, step and finish, with its steps in the model record."""

from __future__ import annotations

import importlib
import sys

import pytest

from bench.orchestrate.plan import plan_suite
from bench.spec import load_suite
from bench.variants import backends
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import RunContext

TOY = '''
from bench.variants.backends import Eager, register_backend


@register_backend
class Traced(Eager):
    """torch.jit.trace of the torch path, as a toy: a new backend in one class."""

    name = "toy_traced"
    description = "torch.jit.trace (toy backend for a test)"

    def unsupported_reason(self, plan):
        if plan.quant is not None:
            return "the toy backend traces fp32 models only"
        return None

    def runnable(self, model, plan, log):
        import torch

        log.steps.append("backend: toy torch.jit.trace")
        self.calls = getattr(self, "calls", 0)
        traced = {}

        def run(*inputs):
            if "fn" not in traced:
                traced["fn"] = torch.jit.trace(model, inputs, check_trace=False)
            self.calls += 1
            return traced["fn"](*inputs)

        return run
'''


@pytest.fixture
def toy_backend(tmp_path, monkeypatch):
    (tmp_path / "toy_backend_module.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_backend_module")
    yield backends.BACKENDS["toy_traced"]
    del backends.BACKENDS["toy_traced"]
    sys.modules.pop(module.__name__, None)


def test_a_toy_backend_in_one_module_runs_a_case(toy_backend, write_suite):
    suite = load_suite(write_suite(
        '[[benchmark]]\nworkload = "digits_cnn"\nphase = "infer"\n'
        'params = { epochs = 1, width = 8, student_width = 4 }\n'
        'matrix = { device = ["cpu"], backend = ["toy_traced"], '
        'quantization = ["none", "int8_dynamic"] }\n'))
    planned = plan_suite(suite)
    assert planned[1].skip_reason == "the toy backend traces fp32 models only"
    case = planned[0].spec
    assert planned[0].skip_reason is None and case.axes["backend"] == "toy_traced"
    workload = get_workload("digits_cnn")
    phase = workload.prepare(case, RunContext("cpu", get_precision("fp32")))
    with phase.session():
        for _ in range(3):
            phase.step()
    outcome = phase.finish()
    assert outcome.metrics["val_accuracy"] > 0.5
    assert "backend: toy torch.jit.trace" in outcome.model.variant
    assert toy_backend.calls >= 3


def test_every_registered_backend_is_an_axis_value():
    from bench.variants.pipeline import variant_axes

    assert variant_axes()["backend"].choices == tuple(backends.BACKENDS)
    assert {"eager", "compile", "onnxruntime"} <= set(backends.BACKENDS)
