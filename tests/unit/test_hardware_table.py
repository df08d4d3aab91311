"""bench table: rows without placement axes, speed-ups against the reference machine,
geometric mean, every format, machines told apart."""

from __future__ import annotations

import csv
import dataclasses
import io

import pytest

from bench.cli import main
from bench.reports.hardware import build_table, render_table
from tests.builders import FINGERPRINT, case, run, trials, write


def machine(model: str, threads: int = 2, device: str = "cpu", scale: float = 1.0):
    fp = {**FINGERPRINT, "cpu": {"model": model, "logical_cores": 2},
          "threads": {"torch_intraop": threads}}
    cases = []
    for name, seconds in (("a", 0.1), ("b", 0.2)):
        c = case(f"w/infer[device={device},batch_size=8]".replace("w/", f"{name}/"),
                 trials(seconds * scale))
        c = dataclasses.replace(c, workload=name, axes={"device": device, "batch_size": 8},
                                throughput=None)
        cases.append(c)
    return dataclasses.replace(run(*cases), fingerprint=fp)


def test_rows_align_across_devices_with_speedups_and_geomean():
    cpu, gpu = machine("Slow CPU"), machine("Fast CPU", device="cuda", scale=0.25)
    headers, rows = build_table([cpu, gpu], metric="median_ms")
    assert headers[1:] == ["Slow CPU (2 threads)", "Fast CPU (2 threads)"]
    assert [r[0] for r in rows[:2]] == ["a/infer[batch_size=8]", "b/infer[batch_size=8]"]
    speedup = float(rows[0][2].rsplit("(x", 1)[1].rstrip(")"))
    assert speedup == pytest.approx(4.0, rel=0.03)  # a quarter of the step time
    assert rows[-1][0].startswith("geometric mean") and rows[-1][2].startswith("x4.0")
    _, rows = build_table([cpu, gpu], metric="median_ms", reference="fast")
    assert rows[-1][1].startswith("x0.25") and rows[-1][2] == "reference"


def test_thread_settings_of_one_machine_are_named_apart():
    headers, _ = build_table([machine("EPYC", 2), machine("EPYC", 1)], metric="median_ms")
    assert headers[1:] == ["EPYC (2 threads), 2 torch threads", "EPYC (2 threads), 1 torch threads"]


@pytest.mark.parametrize("fmt, marker", [("github", "|---"), ("latex", "\\begin{tabular}"),
                                         ("html", "<table>"), ("csv", "geometric mean")])
def test_every_format_renders(fmt, marker):
    text = render_table([machine("A"), machine("B", scale=0.5)], "median_ms", None, fmt)
    assert marker in text
    if fmt == "csv":
        assert len(list(csv.reader(io.StringIO(text)))) == 4  # header, 2 cases, geomean


def test_cli_table_and_bad_reference(tmp_path, capsys):
    a = write(tmp_path / "a.json", machine("A"))
    b = write(tmp_path / "b.json", machine("B", scale=0.5))
    assert main(["table", a, b, "--metric", "median_ms", "--format", "github"]) == 0
    assert "x2.00 over 2 cases" in capsys.readouterr().out
    assert main(["table", a, b, "--reference", "Z80"]) == 2
    assert "no machine matches 'Z80'" in capsys.readouterr().err
