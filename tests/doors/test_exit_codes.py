"""Every exit code of bench/exit_codes.py, from the command line: bench run's 0 and each
reason for 1 (a failed case, a missed accuracy target, a missed SLO; figures only with
--allow-missed-targets; a skipped case is no miss), 2 for bad input, bench gate's 3 (only
the host's noise left speed undecided), bench max-batch's 1 (a search that ended on an
error). 130 and 143 (Ctrl-C, SIGTERM) are run in tests/engine/test_signals.py. README's
table is the module's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import exit_codes
from bench.cli import main
from bench.results.schema import RoundsResult
from tests.builders import QUICK_BUDGET, benchmark_text, case, run, suite_text, trials, write

REPO = Path(__file__).resolve().parents[2]


def _run(write_suite, tmp_path, *benchmarks: str, options: tuple[str, ...] = ()) -> int:
    path = write_suite(suite_text(*benchmarks, name="codes", budget=QUICK_BUDGET))
    return main(["run", str(path), "--out", str(tmp_path / "run.json"), "--no-progress",
                 "--quiet", "--overwrite", *options])


SLEEP = benchmark_text("sleep", params="{ sleep_ms = 1.0 }")
# The sleep phase reports expected_step_s = 0.001: a target it misses, and an SLO.
MISSED_TARGET = benchmark_text("sleep", label="target", params="{ sleep_ms = 1.0 }",
                               accuracy="{ expected_step_s = { max = 1e-9 } }")
MISSED_SLO = benchmark_text("sleep", label="slo", params="{ sleep_ms = 1.0 }",
                            slo="{ p99_ms = 1e-6 }")
RAISES = benchmark_text("fault", params="{ after_steps = 0 }", matrix='{ fault = ["raise"] }')
# gpt2-124m is refused on a CPU (skipped, with its reason): an SLO it cannot meet here is
# not a miss.
SKIPPED_WITH_SLO = benchmark_text("gpt", phase="infer", matrix='{ model = ["gpt2-124m"], '
                                  'device = ["cpu"] }', slo="{ p99_ms = 1e-6 }")


@pytest.mark.slow
@pytest.mark.parametrize("benchmarks, options, code, said", [
    ((SLEEP,), (), exit_codes.OK, None),
    ((SLEEP, SKIPPED_WITH_SLO), (), exit_codes.OK, None),
    ((RAISES,), (), exit_codes.FAILED, "failed (1 error)"),
    ((MISSED_TARGET,), (), exit_codes.FAILED, "1 of 1 cases missed an accuracy target"),
    ((MISSED_SLO,), (), exit_codes.FAILED, "1 of 1 cases missed an SLO"),
    ((MISSED_TARGET, MISSED_SLO), ("--allow-missed-targets",), exit_codes.OK, None),
    ((RAISES, MISSED_SLO), ("--allow-missed-targets",), exit_codes.FAILED, "failed (1 error)"),
], ids=["ok", "skipped-slo", "error", "target", "slo", "allowed", "error-not-allowed"])
def test_bench_run_exits_with_its_reason(write_suite, tmp_path, capsys, benchmarks, options,
                                         code, said):
    assert _run(write_suite, tmp_path, *benchmarks, options=options) == code
    err = capsys.readouterr().err
    if said is None:
        assert "exit 1" not in err
    else:
        assert said in err and "exit 1" in err.splitlines()[-1]
        hint = "--allow-missed-targets" in err.splitlines()[-1]
        assert hint == ("missed" in said)


def test_bad_input_is_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.toml")]) == exit_codes.BAD_INPUT
    assert "missing.toml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse's usage errors: the same code
        main(["run"])
    assert info.value.code == exit_codes.BAD_INPUT


def test_a_gate_the_hosts_noise_left_undecided_is_exit_3(tmp_path, capsys):
    """One paired round a side, both contended: no verdict on speed, not a failure."""
    files = []
    for side in ("baseline", "current"):
        record = run(case("a", trials(0.1)))
        record.cases[0].rounds = RoundsResult([0.1])
        record.run.pairing = {"session": "s", "side": side, "rounds": 1}
        record.cases[0].status, record.cases[0].reason = "contended", "others used 50%"
        files.append(write(tmp_path / f"{side}.json", record))
    code = main(["gate", "--baseline", files[0], "--current", files[1]])
    assert code == exit_codes.NO_VERDICT, capsys.readouterr().out


@pytest.mark.slow
def test_a_max_batch_search_that_ends_on_an_error_is_exit_1(write_suite, capsys):
    path = write_suite(suite_text(RAISES, name="codes", budget=QUICK_BUDGET))
    assert main(["max-batch", str(path), "--ceiling", "4"]) == exit_codes.FAILED
    assert "1 of 1 searches ended on an error" in capsys.readouterr().err


def test_readme_lists_every_code_as_the_module_does():
    assert exit_codes.exit_code_table() in (REPO / "README.md").read_text()
