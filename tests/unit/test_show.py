"""bench show: a run a line per case, one case whole with its raw samples as a histogram."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.errors import BenchInputError
from bench.reports.show import find_case, histogram, render_case, render_run
from bench.results.store import load_run
from tests.builders import REPO

QUICK = REPO / "results" / "runs" / "quick-cpu-epyc-2core.json.gz"
CASE = "digits_cnn/infer[device=cpu,precision=fp32,batch_size=32]"


def test_the_histogram_counts_every_sample_once():
    rows = histogram([0.001] * 6 + [0.002] * 3 + [0.004], bins=3, width=6)
    assert [int(r.rsplit(" ", 1)[1]) for r in rows] == [6, 3, 1]  # 1-2, 2-3, 3-4 ms
    assert rows[0].endswith("| ###### 6") and rows[1].endswith("| ### 3")
    assert histogram([0.001, 0.001]) == ["1 ms | " + "#" * 40 + " 2"]
    assert histogram([]) == ["(no samples)"]


def test_a_case_shows_how_it_was_taken_and_every_raw_sample():
    record = load_run(QUICK)
    case = find_case(record, CASE, "q.json")
    text = render_case(record, case)
    samples = sum(len(t) for t in case.timing.trial_samples_s)
    counted = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if " ms | " in line)
    assert counted == samples
    for part in ("How the figure was taken:", "timer: perf_counter_ns", "stopped by",
                 "95% CI", "stderr tail:", "accuracy: val_accuracy="):
        assert part in text


def test_a_run_lists_each_case_and_a_part_of_an_id_finds_one():
    record = load_run(QUICK)
    listing = render_run(record)
    assert all(c.case_id in listing for c in record.cases)
    assert find_case(record, "device=cpu,precision=fp32,batch_size=32]", "q.json").case_id \
        == CASE
    with pytest.raises(BenchInputError) as info:
        find_case(record, "digits_cnn/infer[", "q.json")
    assert "12 cases match" in str(info.value) and "\n" not in str(info.value)


def test_the_command_exits_0_and_2(capsys):
    assert main(["show", str(QUICK), CASE]) == 0
    assert "Raw samples" in capsys.readouterr().out
    assert main(["show", str(QUICK), "no-such-case"]) == 2
    assert "no cases match" in capsys.readouterr().err
