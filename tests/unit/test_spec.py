"""Suite loading: bad files get one line and exit 2; good files expand to cases."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.cli import main
from bench.errors import BenchInputError
from bench.orchestrate.plan import plan_suite
from bench.spec import expand_suite, load_suite
from bench.spec.model import Budget, CaseSpec
from tests.builders import REPO

GOOD = """
[suite]
name = "t"
[[benchmark]]
workload = "digits_cnn"
phase = "train"
matrix = { device = ["cpu", "cuda"], precision = ["fp32", "bf16"], batch_size = [8, 16] }
accuracy = { val_accuracy = { min = 0.5 } }
"""

BAD_FILES = {
    "malformed TOML": ("[[benchmark]\nworkload = 'linreg'", "malformed TOML"),
    "unknown key": (GOOD.replace('phase = "train"', 'phase = "train"\nbatchsize = 3'),
                    "benchmark[0].batchsize: unknown key"),
    "wrong type": (GOOD.replace("batch_size = [8, 16]", 'batch_size = ["eight"]'),
                   "benchmark[0].matrix.batch_size: expected integer"),
    "unknown workload": (GOOD.replace('"digits_cnn"', '"resnet9000"'),
                         "benchmark[0].workload: unknown workload 'resnet9000'"),
    "unknown axis value": (GOOD.replace('"bf16"', '"fp12"'),
                           "benchmark[0].matrix.precision: unknown value 'fp12'"),
    "unknown axis": (GOOD.replace("batch_size = [8, 16]", "colour = [1]"),
                     "benchmark[0].matrix.colour: unknown key"),
    "budget type": (GOOD + "[budget]\nmax_trials = 'many'\n", "budget.max_trials: expected"),
    "allocator": (GOOD + "[budget]\nallocator = 'jemalloc'\n",
                  "budget.allocator: unknown value 'jemalloc' (valid: steady, system)"),
    "bad phase": (GOOD.replace('phase = "train"', 'phase = "serve"'),
                  "benchmark[0].phase: unknown phase 'serve'"),
    "exclude typo": (GOOD.replace("batch_size = [8, 16] }", "batch_size = [8, 16], exclude = "
                                  "[{ precision = 'fp16' }] }"),
                     "benchmark[0].matrix.exclude[0].precision: the matrix never takes 'fp16'"),
    "exclude axis": (GOOD.replace("batch_size = [8, 16] }", "batch_size = [8, 16], exclude = "
                                  "[{ lr = 0.1 }] }"),
                     "benchmark[0].matrix.exclude[0].lr: unknown key"),
    "exclude shape": (GOOD.replace("batch_size = [8, 16] }", "batch_size = [8, 16], exclude = "
                                   "'bf16' }"), "benchmark[0].matrix.exclude: expected a list"),
    "exclude all": (GOOD.replace("batch_size = [8, 16] }", "batch_size = [8, 16], exclude = "
                                 "[{ batch_size = [8, 16] }] }"),
                    "benchmark[0].matrix.exclude: the exclude list leaves no case"),
    "include value": (GOOD.replace("batch_size = [8, 16] }", "batch_size = [8, 16], include = "
                                   "[{ batch_size = 0 }] }"),
                      "benchmark[0].matrix.include[0].batch_size"),
}


def test_matrix_exclude_and_include_shape_the_cases(write_suite):
    """Issue 30: GitHub Actions' matrix semantics. Exclude drops every combination that
    matches all the axes of an entry; include adds combinations (values the matrix lacks
    allowed), the axes it does not name taking every matrix value."""
    path = write_suite(GOOD.replace("batch_size = [8, 16] }", """batch_size = [8, 16], \
exclude = [{ precision = "bf16", batch_size = 16 }, \
           { device = "cuda", precision = ["fp32", "bf16"] }], \
include = [{ device = "cpu", precision = "bf16", batch_size = 32 }, { batch_size = 8 }] }"""))
    suite = load_suite(path)
    got = [tuple(c.axes[a] for a in ("device", "precision", "batch_size"))
           for c in expand_suite(suite)]
    assert got == [("cpu", "fp32", 8), ("cpu", "fp32", 16), ("cpu", "bf16", 8),
                   ("cpu", "bf16", 32),  # the include's new value
                   ("cuda", "fp32", 8), ("cuda", "bf16", 8)]  # {batch_size = 8}: back in
    assert len(plan_suite(suite)) == 6
    assert [c.axes["batch_size"] for c in expand_suite(suite, {"batch_size": {"32"}})] == [32]


@pytest.mark.parametrize("label", sorted(BAD_FILES))
def test_bad_suite_is_one_line_exit_2(label, write_suite, capsys):
    text, expected = BAD_FILES[label]
    path = write_suite(text)
    assert main(["list", str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in err


def test_errors_name_the_valid_values(write_suite, capsys):
    main(["list", str(write_suite(BAD_FILES["unknown axis value"][0]))])
    err = capsys.readouterr().err
    assert "(valid: fp32, tf32, fp16, bf16, fp8, fp16_cast, bf16_cast)" in err
    main(["list", str(write_suite(BAD_FILES["unknown workload"][0]))])
    err = capsys.readouterr().err
    from bench.workloads import workload_names

    assert f"valid: {', '.join(workload_names())}" in err
    assert "minilm, minilm_finetune, model" in err


def test_cli_process_prints_no_traceback(write_suite):
    path = write_suite(BAD_FILES["wrong type"][0])
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"bench: error: {path}: benchmark[0].matrix.batch_size")


def test_colliding_case_ids_are_refused(write_suite, capsys):
    path = write_suite(GOOD + GOOD.split("[suite]")[1].split('name = "t"')[1])
    assert main(["list", str(path)]) == 2
    err = capsys.readouterr().err
    assert "benchmark[1].label: case digits_cnn/train[" in err
    assert "also comes from benchmark[0]" in err
    labelled = GOOD + GOOD.split('name = "t"')[1].replace("[[benchmark]]",
                                                          '[[benchmark]]\nlabel = "again"')
    planned = plan_suite(load_suite(write_suite(labelled, "ok.toml")))
    assert len({p.case_id for p in planned}) == 16
    assert any(p.case_id.startswith("digits_cnn/train:again[") for p in planned)


def test_missing_file_is_refused(tmp_path, capsys):
    assert main(["list", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read suite file" in capsys.readouterr().err


def test_expansion_keeps_unrunnable_cases_with_reason(write_suite):
    suite = load_suite(write_suite(GOOD))
    planned = plan_suite(suite)
    assert len(planned) == 2 * 2 * 2
    cuda = [p for p in planned if p.spec.device == "cuda"]
    assert len(cuda) == 4
    if not torch.cuda.is_available():
        assert all(p.skip_reason and "CUDA not available" in p.skip_reason for p in cuda)
    assert all(p.skip_reason is None for p in planned if p.spec.device == "cpu")
    ids = [p.case_id for p in planned]
    assert "digits_cnn/train[device=cpu,precision=bf16,batch_size=16]" in ids
    assert len(set(ids)) == len(ids)


def test_defaults_and_selection(write_suite):
    suite = load_suite(write_suite(GOOD))
    bench = suite.benchmarks[0]
    assert bench.params == {"epochs": 8, "width": 32}
    assert bench.matrix["accum_steps"] == (1,)
    assert bench.matrix["lr"] == (2e-3,)  # a recipe axis of the train phase
    picked = plan_suite(suite, {"precision": {"bf16"}, "device": {"cpu"}})
    assert [p.spec.axes["batch_size"] for p in picked] == [8, 16]


def test_precision_unavailable_on_device_is_skipped(write_suite):
    suite = load_suite(write_suite(GOOD.replace('"bf16"', '"tf32"')))
    tf32_cpu = [p for p in plan_suite(suite)
                if p.spec.device == "cpu" and p.spec.axes["precision"] == "tf32"]
    assert tf32_cpu and all("not available on cpu" in p.skip_reason for p in tf32_cpu)


def test_shipped_suites_load():
    for path in sorted((REPO / "suites").glob("*.toml")):
        assert plan_suite(load_suite(path))


def test_zero_processes_is_refused(write_suite, capsys):
    assert main(["list", str(write_suite(GOOD + "[budget]\nprocesses = 0\n"))]) == 2
    assert "budget.processes: value 0 is too small (valid: integer >= 1)" in capsys.readouterr().err


def test_parity_target_is_validated(write_suite, capsys):
    bad = GOOD.replace('phase = "train"', 'phase = "train"\nparity_target = 1.5')
    assert main(["list", str(write_suite(bad))]) == 2
    assert "benchmark[0].parity_target: value 1.5 is above 1" in capsys.readouterr().err
    ok = GOOD.replace('phase = "train"', 'phase = "train"\nparity_target = 0.97')
    planned = plan_suite(load_suite(write_suite(ok, "ok.toml")))
    assert {p.spec.parity_target for p in planned} == {0.97}


def test_a_case_spec_and_its_record_read_the_common_axes_alike_with_one_default_each():
    """The axes every layer reads (batch_size, device, precision, backend, scenario,
    world_size, parallel) are typed properties of the spec and of the record, each with
    one default; reports and modes read them there instead of axes.get(name, default)."""
    from bench.results.schema import CaseResult

    bare = CaseSpec("sleep", "infer", {}, {}, Budget())
    full = CaseSpec("gpt", "train", {"device": "cuda", "batch_size": "8", "precision": "bf16",
                                     "backend": "compile", "scenario": "server",
                                     "world_size": 2, "parallel": "ddp"}, {}, Budget())
    names = ("device", "batch_size", "precision", "backend", "scenario", "world_size",
             "parallel_axis")
    assert [getattr(bare, n) for n in names] == ["cpu", None, "fp32", "eager", "closed_loop",
                                                 1, "none"]
    assert [getattr(full, n) for n in names] == ["cuda", 8, "bf16", "compile", "server", 2,
                                                 "ddp"]
    for spec in (bare, full):
        record = CaseResult.for_case(spec, "ok")
        assert [getattr(record, n) for n in names] == [getattr(spec, n) for n in names]
    assert full.parallel == "ddp" and CaseResult.for_case(full, "ok").parallel is None


def test_a_record_carries_its_specs_identity_and_a_shared_measurement_takes_the_others():
    """One identity object for spec and record: a record built for a spec has the spec's
    identity, owns its own copies, and a configuration measured once under another label
    takes that label's identity with the measurement."""
    from bench.orchestrate.paired import shared_measurement
    from bench.results.schema import CaseResult

    spec = CaseSpec("sleep", "infer", {"device": "cpu", "batch_size": 4}, {"sleep_ms": 1.0},
                    Budget(), label="a", slo={"p99_ms": 5.0}, mode="closed_loop",
                    parity_reference={"precision": "fp32"})
    record = CaseResult.for_case(spec, "ok")
    assert record.identity == spec.identity
    record.axes["batch_size"] = 8
    assert spec.axes["batch_size"] == 4  # the record's axes are its own
    again = CaseSpec("sleep", "infer", {"device": "cpu", "batch_size": 4}, {"sleep_ms": 1.0},
                     Budget(), label="b")
    shared = shared_measurement(CaseResult.for_case(spec, "ok"), again)
    assert shared.identity == again.identity and shared.details["measured_as"] == spec.case_id


@pytest.mark.parametrize("table, key", [
    ('workload = "digits_cnn"\nphase = "infer"\nmatrix = { batch_size = [9223372036854775807] }',
     "batch_size"),
    ('workload = "gpt"\nphase = "train"\nparams = { corpus_mib = 9e18 }', "corpus_mib"),
    ('workload = "digits_cnn"\nphase = "train"\nparams = { epochs = 1000000000 }', "epochs"),
    ('workload = "gpt"\nphase = "train"\nparams = { train_steps = 1000000000000 }',
     "train_steps"),
])
def test_absurd_sizes_are_refused_in_one_line(write_suite, table, key):
    """Before: they passed the loader and failed later, in a worker, as case errors."""
    with pytest.raises(BenchInputError) as info:
        load_suite(write_suite(f"[[benchmark]]\n{table}\n"))
    message = str(info.value)
    assert key in message and "\n" not in message and "<=" in message


def test_an_absurd_memory_limit_is_refused_in_one_line(write_suite):
    with pytest.raises(BenchInputError) as info:
        load_suite(write_suite('[budget]\nmemory_limit_mib = 1e9\n[[benchmark]]\n'
                               'workload = "sleep"\nphase = "infer"\n'))
    assert "memory_limit_mib" in str(info.value) and "\n" not in str(info.value)


def test_select_takes_booleans_as_toml_writes_them():
    """--select sequence_parallel=true named a value the suite has (TOML's true) and was
    refused: case ids spell it True."""
    from bench.spec.expand import expand_suite, parse_select

    suite = load_suite(REPO / "suites" / "parallel.toml")
    for spelling in ("true", "True"):
        picked = expand_suite(suite, parse_select([f"sequence_parallel={spelling}"]))
        assert picked and all(c.axes.get("sequence_parallel", True) for c in picked)
        assert any(c.axes.get("sequence_parallel") is True for c in picked)


def test_select_label_keeps_the_benchmarks_with_that_label_and_refuses_an_unknown_one():
    """The device script runs one benchmark of a suite (train_gpu's "target") by its label."""
    from bench.results.schema import CaseResult, RunRecord
    from bench.results.selection import select_cases
    from bench.spec.expand import expand_suite, parse_select

    suite = load_suite(REPO / "suites" / "train_gpu.toml")
    picked = expand_suite(suite, parse_select(["label=target,fp8"]))
    assert {c.label for c in picked} == {"target", "fp8"} and len(picked) == 2
    both = expand_suite(suite, parse_select(["label=throughput", "precision=bf16"]))
    assert {(c.label, c.axes["precision"]) for c in both} == {("throughput", "bf16")}
    with pytest.raises(BenchInputError, match="label never takes targett.*valid: .*target"):
        expand_suite(suite, parse_select(["label=targett"]))

    def result(label):
        return CaseResult(case_id=f"gpt/train:{label}[device=cpu]", workload="gpt",
                          phase="train", axes={"device": "cpu"}, params={}, status="ok",
                          label=label)
    record = RunRecord(run=None, fingerprint={},
                       cases=[result("target"), result("fp8"), result(None)])
    (kept,) = select_cases([record], parse_select(["label=fp8"]), ["x.json"])
    assert [c.label for c in kept.cases] == ["fp8"]  # an unlabelled case: never


def test_interleaved_pipeline_on_one_cpu_rank_is_skipped_where_gloo_refuses_it(monkeypatch):
    """torch 2.11 (the GPU machines' torch) sends a rank's activations between its own two
    interleaved stages through gloo, which fails ('Pair is not connected'): a reason, not a
    crash in the worker. World 2 and torch 2.13 run it."""
    import torch

    from bench.spec.expand import expand_suite, parse_select
    from bench.workloads import get_workload

    suite = load_suite(REPO / "suites" / "parallel.toml")
    cases = expand_suite(suite, parse_select(["pp_schedule=interleaved_1f1b"]))
    one = [c for c in cases if c.axes["world_size"] == 1 and c.axes["parallel"] == "pp"]
    two = [c for c in cases if c.axes["world_size"] == 2 and c.axes["parallel"] == "pp"]
    assert one and two
    gpt = get_workload("gpt")
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    assert "gloo, which torch 2.11.0+cu130 refuses" in gpt.unsupported_reason(one[0])
    assert gpt.unsupported_reason(two[0]) is None
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    assert gpt.unsupported_reason(one[0]) is None
