"""Scaling figures: weak- and strong-scaling efficiency computed right from the
world-1 cases of the same run, and shown by bench report."""

from __future__ import annotations

import dataclasses

import pytest

from bench.reports.html import render_html
from bench.reports.scaling import render_scaling, scaling
from bench.reports.table import render_report
from bench.results.schema import ParallelResult, RankReport, ThroughputResult
from tests.builders import case, run


def _case(mode: str, world: int, batch: int, step_s: float):
    c = case(f"gpt/train[parallel={mode},world_size={world},batch_size={batch}]",
             [step_s] * 8)
    c = dataclasses.replace(c, workload="gpt", phase="train",
                            axes={"device": "cpu", "parallel": mode, "world_size": world,
                                  "batch_size": batch})
    total = batch * world
    c.throughput = ThroughputResult(total / step_s, total / step_s, total / step_s,
                                    "samples/s", total, "test")
    if mode != "none":
        c.parallel = ParallelResult(
            mode=mode, world_size=world, nnodes=1, process_group="gloo", threads_per_rank=1,
            launcher="test", global_batch=total,
            samples_per_s_per_device=total / step_s / world, samples_per_s_total=total / step_s,
            straggler_median_spread=0.02, straggler_max_spread=0.1, no_sync_step_s=step_s * 0.8,
            exposed_communication_s=step_s * 0.2,
            exposed_communication_ci_s=[step_s * 0.1, step_s * 0.3],
            ranks=[RankReport(r, "h", 100 + r, step_s,
                              memory_split={"parameters_mib": 1.0 / world,
                                            "gradients_mib": 1.0 / world,
                                            "optimizer_state_mib": 2.0 / world},
                              peak_rss_mib=300.0) for r in range(world)])
    return c


def test_weak_and_strong_efficiency_against_the_world_one_cases():
    record = run(
        _case("none", 1, 8, 0.010), _case("none", 1, 16, 0.018),
        _case("ddp", 1, 8, 0.011), _case("ddp", 1, 16, 0.020),
        _case("ddp", 2, 8, 0.0125),
        _case("fsdp2", 2, 8, 0.016))
    rows = {s.case.case_id: s for s in scaling(record)}
    ddp = rows["gpt/train[parallel=ddp,world_size=2,batch_size=8]"]
    # weak: thr_2 = 16 / 0.0125 = 1280/s against 2 x ddp world 1 at batch 8 (8 / 0.011)
    assert ddp.weak == pytest.approx((16 / 0.0125) / (2 * 8 / 0.011))
    assert ddp.weak_reference == "gpt/train[parallel=ddp,world_size=1,batch_size=8]"
    # strong: T_1 at the global batch 16 (ddp world 1: 0.020 s) / (2 x 0.0125 s)
    assert ddp.strong == pytest.approx(0.020 / (2 * 0.0125))
    fsdp = rows["gpt/train[parallel=fsdp2,world_size=2,batch_size=8]"]
    # no fsdp2 world-1 case: the parallel=none one is the reference
    assert fsdp.weak_reference == "gpt/train[parallel=none,world_size=1,batch_size=8]"
    assert fsdp.strong == pytest.approx(0.018 / (2 * 0.016))
    text = render_report(record)
    assert "Scaling across ranks" in text
    assert "0.5/0.5/1" in text  # rank 0's sharded split
    assert "| 88%" in render_scaling(record)  # ddp's weak efficiency, 1280 / 1454.5
    assert "| 2.5 [1.3, 3.8] (20%)" in render_scaling(record)  # ddp world 2's exposed comm
    assert "Scaling across ranks" in render_html(record)  # the plot, beside the table


def test_model_parallel_ranks_share_a_batch_and_a_pipeline_shows_its_bubble():
    """Issue 31: tp and pp ranks train on one batch (data_parallel_size 1), so strong
    scaling compares with the world-1 case at that batch, not at N x b; a pipeline's row
    shows its theoretical bubble beside the measured one and the whole step's idle share
    (1 - strong eff.)."""
    def model_parallel(mode: str, world: int, step_s: float):
        c = _case(mode, world, 8, step_s)
        c.parallel = dataclasses.replace(c.parallel, global_batch=8, data_parallel_size=1)
        c.throughput = ThroughputResult(8 / step_s, 8 / step_s, 8 / step_s, "samples/s", 8,
                                        "test")
        if mode == "pp":
            c.details["pipeline"] = {"bubble_theoretical": (world - 1) / (4 + world - 1)}
            c.parallel.pipeline_bubble = 0.25 if world > 1 else 0.0
        return c

    record = run(model_parallel("pp", 1, 0.010), model_parallel("pp", 2, 0.008),
                 _case("none", 1, 16, 0.018), model_parallel("tp", 2, 0.006))
    rows = {s.case.case_id: s for s in scaling(record)}
    pp = rows["gpt/train[parallel=pp,world_size=2,batch_size=8]"]
    assert pp.strong_reference == "gpt/train[parallel=pp,world_size=1,batch_size=8]"
    assert pp.strong == pytest.approx(0.010 / (2 * 0.008))
    tp = rows["gpt/train[parallel=tp,world_size=2,batch_size=8]"]
    assert tp.strong_reference is None  # no world-1 case at 8; never the one at 2 x 8
    # 1/5 theoretical; the stages' mean idle share; 1 - 0.625 the whole step's
    assert "20% / 25% / 38%" in render_scaling(record)


def test_a_two_dimensional_case_scales_against_one_process_at_its_data_parallel_batch():
    """fsdp2_tp at world 4, tp_size 2: two groups train on different slices, so strong
    scaling compares with one process at 2 x b; its tp_size axis does not start a series
    of its own (the parallel=none cases are its references)."""
    two_d = _case("fsdp2_tp", 4, 8, 0.040)
    two_d.axes["tp_size"] = 2
    two_d.parallel = dataclasses.replace(two_d.parallel, global_batch=16,
                                         data_parallel_size=2)
    two_d.throughput = ThroughputResult(16 / 0.040, 16 / 0.040, 16 / 0.040, "samples/s", 16,
                                        "test")
    record = run(_case("none", 1, 8, 0.010), _case("none", 1, 16, 0.018), two_d)
    (row,) = scaling(record)
    assert row.strong_reference == "gpt/train[parallel=none,world_size=1,batch_size=16]"
    assert row.strong == pytest.approx(0.018 / (4 * 0.040))
    assert row.weak == pytest.approx((16 / 0.040) / (4 * 8 / 0.010))
