"""Issue 30: one grammar for the commands that read result files: the two runs of compare and
gate as positional arguments or --baseline/--current; --out for the primary output; --json
verdicts; --select on every command that lists cases (a current run made with --select is
gated against only those cases of the baseline); gzip-compressed result files read."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.results.schema import RunInfo
from tests.builders import case, run, trials, write


def _axes(result, **axes):
    return dataclasses.replace(result, axes=axes)


def _pair(tmp_path):
    cases = [_axes(case(f"w/infer[b={b}]", trials(0.1, seed=b)), b=b) for b in (1, 8)]
    slower = [_axes(case(f"w/infer[b={b}]", trials(0.1 if b == 1 else 0.2, seed=b + 9)), b=b)
              for b in (1, 8)]
    return write(tmp_path / "base.json", run(*cases)), write(tmp_path / "cur.json",
                                                             run(*slower))


def test_compare_and_gate_take_the_runs_either_way(tmp_path, capsys):
    base, cur = _pair(tmp_path)
    assert main(["gate", base, cur]) == main(["gate", "--baseline", base, "--current", cur]) == 1
    capsys.readouterr()
    assert main(["compare", base, cur]) == 0
    positional = capsys.readouterr().out
    assert main(["compare", "--baseline", base, "--current", cur]) == 0
    assert capsys.readouterr().out == positional
    assert main(["gate", base, cur, "--baseline", base]) == 2
    assert main(["compare", base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("bench: error:") for line in err)


def test_json_verdicts_and_out_files(tmp_path, capsys):
    base, cur = _pair(tmp_path)
    assert main(["gate", base, cur, "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["exit_code"] == 1 and verdict["verdict"] == "FAIL"
    assert [f["case_id"] for f in verdict["regressions"]] == ["w/infer[b=8]"]
    assert verdict["speed"]["w/infer[b=8]"]["verdict"] == "regression"
    assert main(["compare", base, cur, "--json", "--out", str(tmp_path / "c.json")]) == 0
    rows = json.loads((tmp_path / "c.json").read_text())
    assert [r["case_id"] for r in rows] == ["w/infer[b=1]", "w/infer[b=8]"]
    assert rows[1]["speed"]["ratio"] == pytest.approx(0.5, rel=0.05)
    assert main(["gate", base, cur, "--out", str(tmp_path / "g.md")]) == 1
    assert (tmp_path / "g.md").read_text().startswith("## bench gate: FAIL")
    assert main(["report", cur, "--out", str(tmp_path / "r.md")]) == 0
    assert "w/infer[b=8]" in (tmp_path / "r.md").read_text()


def test_select_narrows_every_reader_and_a_typo_is_one_line(tmp_path, capsys):
    base, cur = _pair(tmp_path)
    assert main(["gate", base, cur, "--select", "b=1"]) == 0
    capsys.readouterr()
    assert main(["report", cur, "--select", "b=8", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "w/infer[b=8]" in out and "w/infer[b=1]" not in out
    assert main(["table", base, cur, "--select", "b=8"]) == 0
    assert main(["show", cur, "--select", "b=1"]) == 0
    assert "w/infer[b=8]" not in capsys.readouterr().out
    assert main(["gate", base, cur, "--select", "batch=1"]) == 2
    assert "no case of" in capsys.readouterr().err
    assert main(["compare", base, cur, "--select", "b=3"]) == 2
    assert "(valid: 1, 8)" in capsys.readouterr().err


def test_a_run_made_with_select_is_gated_against_those_cases_only(tmp_path, capsys):
    """Before: every baseline case the selected run did not run was a regression."""
    base, _ = _pair(tmp_path)
    only = _axes(case("w/infer[b=1]", trials(0.1, seed=5)), b=1)
    record = run(only)
    record = dataclasses.replace(record, run=dataclasses.replace(
        record.run, selection={"b": ["1"]}))
    assert isinstance(record.run, RunInfo)
    cur = write(tmp_path / "some.json", record)
    assert main(["gate", base, cur]) == 0
    captured = capsys.readouterr()
    assert "1 cases" in captured.out and "run with --select b=1" in captured.err


def test_report_refuses_html_beside_format(tmp_path, capsys):
    base, _ = _pair(tmp_path)
    assert main(["report", base, "--html", str(tmp_path / "r.html"), "--format", "csv"]) == 2
    assert "--html: and --format csv both choose the output" in capsys.readouterr().err


def test_a_gzip_result_file_reads_as_its_json_and_a_bomb_is_one_line(tmp_path, capsys,
                                                                       monkeypatch):
    base, _ = _pair(tmp_path)
    packed = tmp_path / "base.json.gz"
    packed.write_bytes(gzip.compress(Path(base).read_bytes()))
    assert main(["compare", base, str(packed)]) == 0
    assert "w/infer[b=8]" in capsys.readouterr().out
    (tmp_path / "cut.json.gz").write_bytes(packed.read_bytes()[:-20])
    assert main(["report", str(tmp_path / "cut.json.gz")]) == 2
    assert "truncated gzip data" in capsys.readouterr().err
    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(gzip.compress(b" " * (3 << 20)))
    import bench.results.store as store

    monkeypatch.setattr(store, "MAX_RESULT_BYTES", 1 << 20)
    assert main(["report", str(bomb)]) == 2
    assert "decompresses to more than 1 MiB" in capsys.readouterr().err


def _options(command: str) -> dict[str, str | None]:
    from bench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {opt: action.help for action in sub.choices[command]._actions
            for opt in action.option_strings}


@pytest.mark.parametrize("command", ["run", "max-batch", "ab", "tune"])
def test_every_long_command_can_be_quiet_and_without_progress(command):
    options = _options(command)
    assert "--quiet" in options and "--no-progress" in options
    assert options["--quiet"] and options["--no-progress"]


@pytest.mark.parametrize("command", ["list", "run", "max-batch", "ab", "report", "show",
                                     "compare", "gate", "table"])
def test_every_command_that_lists_cases_selects_them(command):
    assert "--select" in _options(command)


@pytest.mark.parametrize("command", ["run", "report", "compare", "gate", "table", "ab",
                                     "max-batch", "tune", "init", "merge"])
def test_every_command_writes_its_primary_output_with_out(command):
    assert "--out" in _options(command)


@pytest.mark.parametrize("command", ["report", "compare", "table"])
def test_format_says_its_choices(command):
    assert "github" in (_options(command)["--format"] or "")


def test_report_and_table_offer_one_set_of_formats():
    from bench.reports.hardware import FORMATS as TABLE_FORMATS
    from bench.reports.table import FORMATS

    assert TABLE_FORMATS == FORMATS
