"""Speed-ups between variants that can be trusted: each variant against its
parity reference in interleaved worker processes over rounds (a paired CI), and identical
configurations under two benchmark labels measured once."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.errors import BenchInputError
from bench.orchestrate.paired import reference_of, shared_measurement
from bench.orchestrate.plan import plan_suite
from bench.results.schema import AccuracyResult
from bench.spec import load_suite
from bench.spec.model import AccuracyTarget, measurement_key
from tests.builders import budget_text, case, trials

SUITE = """
[suite]
name = "paired"
{suite_extra}
""" + budget_text(min_trials=4, max_trials=4, trial_time_s=0.01, warmup_max_s=0.05,
                  max_time_s=0.5, timeout_s=120).replace("{", "{{") + """
[[benchmark]]
label = "speed"
model = "bench.workloads.user_model:tiny_mlp"
matrix = {{ backend = ["eager", "onnxruntime"], batch_size = [8] }}

[[benchmark]]
label = "again"
model = "bench.workloads.user_model:tiny_mlp"
matrix = {{ batch_size = [8] }}
accuracy = {{ fidelity_mean_cos = {{ min = 2.0 }} }}
"""


def suite(write_suite, extra=""):
    return write_suite(SUITE.format(suite_extra=extra))


def test_references_and_identical_configurations_are_found(write_suite):
    planned = plan_suite(load_suite(suite(write_suite)))
    eager, onnx, again = (p.spec for p in planned)
    assert reference_of(onnx, planned) == eager
    assert reference_of(eager, planned) is None  # a reference has none
    assert measurement_key(eager) == measurement_key(again) != measurement_key(onnx)


def test_a_shared_measurement_keeps_its_own_identity_and_targets(write_suite):
    planned = plan_suite(load_suite(suite(write_suite)))
    eager, again = planned[0].spec, planned[2].spec
    original = case(eager.case_id, trials(0.01))
    original.accuracy = AccuracyResult.for_case(eager, {"fidelity_mean_cos": 1.0},
                                                ("fidelity_mean_cos", True))
    shared = shared_measurement(original, again)
    assert shared.case_id == again.case_id and shared.label == "again"
    assert shared.timing == original.timing and shared.details["measured_as"] == eager.case_id
    assert original.accuracy.passed is None and shared.accuracy.passed is False  # min 2.0
    assert again.accuracy == (AccuracyTarget("fidelity_mean_cos", min=2.0),)


def test_one_paired_round_is_refused(write_suite, capsys):
    with pytest.raises(BenchInputError, match="suite.paired_rounds"):
        load_suite(suite(write_suite, "paired_rounds = 1"))
    assert main(["run", str(suite(write_suite)), "--paired-rounds", "1"]) == 2
    assert "--paired-rounds" in capsys.readouterr().err


@pytest.mark.slow
def test_a_variant_is_measured_against_its_reference_in_interleaved_rounds(write_suite,
                                                                           tmp_path, capsys):
    out = tmp_path / "run.json"
    # --allow-missed-targets: the "again" case's accuracy target is missed on purpose.
    assert main(["run", str(suite(write_suite, "paired_rounds = 2")), "--out", str(out),
                 "--no-progress", "--allow-missed-targets"]) == 0
    assert "x reference (paired 95% CI)" in capsys.readouterr().out
    cases = {c["case_id"]: c for c in json.loads(out.read_text())["cases"]}
    eager = cases["model/infer:speed[batch_size=8,backend=eager]"]
    onnx = cases["model/infer:speed[batch_size=8,backend=onnxruntime]"]
    again = cases["model/infer:again[batch_size=8]"]
    assert eager["vs_reference"] is None and again["vs_reference"] is None
    paired = onnx["vs_reference"]
    assert paired["reference_case"] == eager["case_id"] and paired["rounds"] == 2
    assert len(paired["reference_medians_s"]) == len(paired["case_medians_s"]) == 2
    ratios = [r / c for r, c in zip(paired["reference_medians_s"], paired["case_medians_s"],
                                    strict=True)]
    assert paired["speedup"] == pytest.approx((ratios[0] * ratios[1]) ** 0.5)
    assert paired["ci_low"] <= paired["speedup"] <= paired["ci_high"]
    # The identical configuration was measured once: the same trials, its own verdict.
    assert again["timing"] == eager["timing"]
    assert again["details"]["measured_as"] == eager["case_id"]
    assert again["accuracy"]["passed"] is False and eager["accuracy"]["passed"] is None


def _scripted_pairing(write_suite, monkeypatch, statuses: list[str], rounds: int = 3):
    """paired_speedup over scripted workers: each worker call takes the next status; the
    variant's steps take 0.5 x the reference's."""
    from bench.orchestrate.paired import paired_speedup
    from tests.builders import ScriptedLauncher

    script = iter(statuses)
    calls = []

    def fake_run(spec):  # noqa: ANN001, ANN202
        calls.append(spec.case_id)
        scale = 1.0 if spec.backend == "eager" else 0.5
        result = case(spec.case_id, trials(0.01 * scale, n=5, seed=len(calls)))
        result.status = next(script, "ok")
        result.reason = "steal 31%" if result.status == "contended" else None
        return result

    planned = plan_suite(load_suite(suite(write_suite)))
    variant = next(p.spec for p in planned if p.spec.backend == "onnxruntime")
    return paired_speedup(variant, reference_of(variant, planned), rounds,
                          ScriptedLauncher(fake_run)), calls


def test_paired_rounds_leave_out_a_contended_round_and_run_another(write_suite, monkeypatch):
    """The round runner bench ab uses: a round with a contended arm is left out of the
    pairing and replaced, so the speed-up rests on clean rounds only."""
    paired, calls = _scripted_pairing(write_suite, monkeypatch,
                                      ["ok", "contended", "ok", "ok", "ok", "ok", "ok", "ok"])
    assert len(calls) == 2 * 4  # 3 kept rounds and 1 left out
    assert paired.rounds == 3 and paired.left_out == 1 and not paired.contended
    assert paired.speedup == pytest.approx(2.0, rel=0.05)
    assert len(paired.reference_medians_s) == len(paired.case_medians_s) == 3


def test_paired_rounds_all_contended_stand_and_say_so(write_suite, monkeypatch):
    """A host busy throughout: after as many left-out rounds as it may keep, the contended
    rounds stand, marked contended (never silently clean)."""
    paired, calls = _scripted_pairing(write_suite, monkeypatch, ["contended"] * 100)
    assert len(calls) == 2 * 3
    assert paired.contended and paired.left_out == 3 and paired.rounds == 3


def test_a_failed_paired_round_says_why(write_suite, monkeypatch):
    paired, _ = _scripted_pairing(write_suite, monkeypatch, ["ok", "crashed"])
    assert isinstance(paired, str) and "ended crashed" in paired
