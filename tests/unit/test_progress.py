"""Sweep progress in a log: whole lines, one per tenth of the cases, no carriage return."""

from __future__ import annotations

import io

from bench.orchestrate.progress import LineProgress, progress


def test_a_log_gets_a_line_per_tenth_of_the_cases_and_no_carriage_return():
    log = io.StringIO()  # not a terminal
    now = [0.0]
    bar = LineProgress(20, "quick (local)", file=log, clock=lambda: now[0])
    for _ in range(20):
        now[0] += 30.0  # each case takes 30 s on the scripted clock
        bar.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10
    assert lines[0] == "quick (local): 2/20 cases (10%) in 1 min 00 s, about 9 min 00 s left"
    assert lines[-1] == "quick (local): 20/20 cases (100%) in 10 min 00 s"


def test_few_cases_get_a_line_each_and_a_disabled_bar_writes_only_messages():
    log = io.StringIO()
    bar = progress(3, "s", True, file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(3):
        bar.update()
    assert [line.split(" in ")[0] for line in log.getvalue().splitlines()] == [
        "s: 1/3 cases (33%)", "s: 2/3 cases (67%)", "s: 3/3 cases (100%)"]
    quiet = io.StringIO()
    silent = progress(3, "s", False, file=quiet)
    silent.update()
    silent.write("error: s[x]: boom")
    assert quiet.getvalue() == "error: s[x]: boom\n"


def test_iterating_counts_each_item():
    log = io.StringIO()
    assert list(progress(2, "paired rounds", True, ["a", "b"], file=log)) == ["a", "b"]
    assert log.getvalue().splitlines()[-1].startswith("paired rounds: 2/2 cases (100%)")
