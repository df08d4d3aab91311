"""Fine-tuning the real MiniLM (frozen layers stay frozen, what trains is what the
record says), and gpt's recipe axes in a time-to-accuracy run."""

from __future__ import annotations

import pytest
import torch

from bench.measurement.timers import PerfCounterTimer
from bench.measurement.training_run import run_to_target
from bench.spec.model import TrainingRunSpec
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import RunContext
from bench.workloads.finetune import TOPICS, topic_split
from tests.builders import workload_case

FP32 = get_precision("fp32")


def _phase(workload: str, axes: dict, params: dict, training: TrainingRunSpec | None = None):
    case = workload_case(workload, "train", axes, params, training=training, seed=1)
    return get_workload(workload).prepare(case, RunContext("cpu", FP32, 1))


def test_the_topic_split_keeps_whole_pairs_apart():
    train, train_y, val, val_y = topic_split()
    assert (len(train), len(val)) == (168, 72)
    assert sorted(set(train_y)) == sorted(set(val_y)) == list(range(len(TOPICS)))
    assert not set(train) & set(val)


@pytest.mark.parametrize(("mode", "trainable_groups"), [("head_only", 0), ("last_k", 2)])
def test_a_frozen_layer_does_not_change_and_an_unfrozen_one_does(mode, trainable_groups):
    phase = _phase("minilm_finetune", {"finetune": mode, "unfreeze_layers": 2,
                                       "batch_size": 8, "dropout": 0.0}, {"seq_len": 16})
    encoder = phase.classifier.pooled.encoder
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    head_before = phase.classifier.head.weight.detach().clone()
    for _ in range(3):
        phase.step()
    layers = list(encoder.encoder.layer)
    unfrozen = {id(p) for layer in layers[len(layers) - trainable_groups:]
                for p in layer.parameters()}
    for name, param in encoder.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (id(param) in unfrozen), name
    assert not torch.equal(phase.classifier.head.weight, head_before)
    details = phase.run_outcome(phase.evaluate()).details
    head = sum(p.numel() for p in phase.classifier.head.parameters())
    assert details["trainable_parameters"] == head + sum(
        p.numel() for layer in layers[len(layers) - trainable_groups:]
        for p in layer.parameters())
    split = details["memory_split"]
    assert split["gradients_mib"] < split["parameters_mib"] / 4  # what freezing saves


def test_gradual_unfreezing_adds_one_layer_from_the_top_each_epoch():
    phase = _phase("minilm_finetune", {"finetune": "gradual_unfreeze", "batch_size": 56},
                   {"seq_len": 8})
    assert phase.steps_per_epoch == 3
    seen = []
    for _ in range(7):
        phase.step()
        seen.append(phase.unfrozen)
    assert seen == [0, 0, 1, 1, 1, 2, 2]
    top = list(phase.classifier.pooled.encoder.encoder.layer)[-1]
    assert all(p.requires_grad for p in top.parameters())


def test_gpt_runs_to_a_bits_per_byte_target_with_a_recipe():
    spec = TrainingRunSpec(eval_every=8 * 64 * 4, max_epochs=0.05, max_time_s=60,
                           target_metric="val_bpb", target=0.0, higher_is_better=False)
    phase = _phase("gpt", {"model": "tiny", "batch_size": 8, "optimizer": "momentum",
                           "lr_schedule": "warmup_cosine", "grad_clip": 1.0},
                   {"corpus_mib": 0.5, "train_steps": 30, "lr": 0.05}, spec)
    trace = run_to_target(phase, PerfCounterTimer(), spec, 1, "val_bpb")
    run = trace.run
    assert not run.converged and run.stop_reason == "max_epochs"
    assert run.steps == 26 and len(run.curve) == 7  # an evaluation every 4 steps, then the cap
    assert run.curve[-1].metrics["val_bpb"] < run.curve[0].metrics["val_bpb"]
    assert isinstance(phase.trainer.optimizer, torch.optim.SGD)
    outcome = phase.run_outcome(run.curve[-1].metrics)
    assert set(get_workload("gpt").metrics("train")) <= set(outcome.metrics)
