"""tools/test_repeat.py: what it reads from pytest's JUnit report and what it prints."""

from __future__ import annotations

import sys

from tests.builders import REPO

sys.path.insert(0, str(REPO / "tools"))

import test_repeat  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3" time="212.5">
<testcase classname="tests.test_a" name="test_ok" time="1.5"/>
<testcase classname="tests.test_a" name="test_flaky" time="30.0"><failure message="x"/></testcase>
<testcase classname="tests.test_b" name="test_broken" time="0.1"><error message="y"/></testcase>
</testsuite></testsuites>
"""


def test_a_junit_report_gives_wall_time_count_failures_and_durations(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    wall, count, failed, durations = test_repeat.read_junit(path)
    assert wall == 212.5 and count == 3
    assert failed == ["tests.test_a::test_flaky", "tests.test_b::test_broken"]
    assert durations[0] == (30.0, "tests.test_a::test_flaky")
    assert test_repeat.read_junit(tmp_path / "missing.xml") == (None, 0, [], [])


def test_the_summary_counts_each_tests_failures_over_runs():
    runs = [test_repeat.Run(1, 0, 0, 250.0, 212.5, 3, [], [(30.0, "t::slow")]),
            test_repeat.Run(2, 2, 2, 300.0, 260.0, 3, ["t::flaky"], [(41.0, "t::slow")])]
    text = test_repeat.render(runs)
    assert "| 2 | 2 | 2 | 3 | 1 | 260 | 300 |" in text
    assert "- 1/2 t::flaky" in text and "- t::slow: 30.0, 41.0" in text
    assert "No test failed" in test_repeat.render(runs[:1])
