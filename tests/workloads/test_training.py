"""Training correctness: accumulation equals one big batch; the workloads learn."""

from __future__ import annotations

import torch
from torch import nn

from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads._training import accumulate_gradients, linear_warmup_decay
from bench.workloads.base import RunContext
from bench.workloads.digits_cnn import DigitsCNN, load_split
from tests.builders import workload_case

FP32 = get_precision("fp32")


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def test_accumulated_micro_batches_equal_one_big_batch():
    x_train, y_train, _, _ = load_split()
    x, y = torch.from_numpy(x_train[:64]), torch.from_numpy(y_train[:64])
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    loss_fn = nn.functional.cross_entropy

    accumulate_gradients(model, loss_fn, [(x, y)], FP32, "cpu")
    big = _grads(model)
    for k in (2, 4, 8):
        model.zero_grad(set_to_none=True)
        chunk = 64 // k
        micro = [(x[i * chunk:(i + 1) * chunk], y[i * chunk:(i + 1) * chunk]) for i in range(k)]
        accumulate_gradients(model, loss_fn, micro, FP32, "cpu")
        for g_big, g_acc in zip(big, _grads(model), strict=True):
            torch.testing.assert_close(g_acc, g_big, rtol=1e-5, atol=1e-6)


def test_accumulation_without_dividing_by_k_would_differ():
    # Guard that the test above can fail: summing undivided losses gives k-times gradients.
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    accumulate_gradients(model, nn.functional.mse_loss, [(x, y)], FP32, "cpu")
    big = _grads(model)[0]
    model.zero_grad(set_to_none=True)
    for xb, yb in ((x[:4], y[:4]), (x[4:], y[4:])):
        nn.functional.mse_loss(model(xb), yb).backward()
    assert not torch.allclose(model.weight.grad, big)


def test_lr_schedule_warms_up_then_decays():
    f = linear_warmup_decay(100, 0.1)
    assert f(0) == 0.1 and f(9) == 1.0
    assert f(10) == 1.0 and 0 < f(55) < 1 and f(100) == 0.0


def _case(workload, phase, axes, **params):
    return get_workload(workload), workload_case(workload, phase, axes, params)


def test_linreg_learns_the_slope():
    for method in ("full_batch", "sgd", "minibatch"):
        w, case = _case("linreg", "train", {"device": "cpu", "precision": "fp32",
                                            "batch_size": 16, "accum_steps": 1,
                                            "method": method, "lr_schedule": "warmup_linear"},
                        epochs=30, n_train=64)
        outcome = w.prepare(case, RunContext("cpu", FP32)).finish()
        assert abs(outcome.metrics["slope"] - 2.0) < 0.1, (method, outcome.metrics)
        assert outcome.metrics["val_mse"] < 0.02
        curve = outcome.details["train_loss_per_epoch"]
        assert curve[-1] < curve[0]


def test_digits_cnn_trains_and_infers():
    axes = {"device": "cpu", "precision": "fp32", "batch_size": 64, "accum_steps": 1}
    w, case = _case("digits_cnn", "train", axes, epochs=3, width=8)
    phase = w.prepare(case, RunContext("cpu", FP32))
    phase.step()
    outcome = phase.finish()
    assert outcome.metrics["val_accuracy"] > 0.8
    assert outcome.details["n_train"] == 1437 and outcome.details["n_val"] == 360
    curve = outcome.details["train_loss_per_epoch"]
    assert curve[-1] < curve[0]

    axes = {"device": "cpu", "precision": "bf16", "batch_size": 16}
    w, case = _case("digits_cnn", "infer", axes, epochs=3, width=8)
    phase = w.prepare(case, RunContext("cpu", get_precision("bf16")))
    with phase.session():
        out = phase.step()
    assert out.shape == (16, 10) and out.dtype == torch.bfloat16
    assert phase.finish().metrics["val_accuracy"] > 0.8
