"""The HTML report: self-contained, with decodable PNG plots from real committed runs;
the Pareto front on a known answer. (Rendering in Chromium: tools/check_html.py.)"""

from __future__ import annotations

import base64
import re

import pytest

pytest.importorskip("matplotlib")

from bench.reports.html import pareto_front, render_html  # noqa: E402
from bench.results.store import load_run  # noqa: E402
from tests.builders import REPO  # noqa: E402


def images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)",
                                                    page)]


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 0.99), (2.0, 0.98), (3.0, 0.90), (1.5, 0.95), (2.5, 0.97), (0.5, 1.0)]
    assert pareto_front(points) == [(0.5, 1.0), (1.0, 0.99), (2.0, 0.98), (2.5, 0.97),
                                    (3.0, 0.90)]
    assert pareto_front([(1, 1), (2, 2)]) == [(2, 2)]


@pytest.mark.parametrize("run, expected", [
    ("inference-cpu-epyc-2core.json.gz", ["Accuracy against throughput: minilm",
                                        "Accuracy against throughput: digits_cnn"]),
    ("train-cpu-epyc-2core.json.gz", ["Memory against accumulation steps",
                                    "Training loss per optimizer step"]),
    ("quick-cpu-epyc-2core.json.gz", ["Throughput against batch size: digits_cnn/infer",
                                    "Training loss per epoch"]),
    ("generate-served-cpu-xeon-avx512-2core.json.gz",
     ["Served generation: TTFT against load: smollm2/generate",
      "Served generation: TPOT against load: smollm2/generate"]),
])
def test_report_embeds_every_plot_as_a_png(run, expected):
    page = render_html(load_run(REPO / "results" / "runs" / run))
    pngs = images(page)
    assert pngs and all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5000 for p in pngs)
    assert page.count("<img ") == len(pngs)
    for title in expected:
        assert title in page
    assert "<table>" in page and "http" not in page.split("<body", 1)[1]  # nothing fetched


def test_the_report_says_which_allocator_the_figures_describe():
    from bench.reports.table import render_report
    from bench.results.schema import CaseResult, RunInfo, RunRecord

    info = RunInfo(run_id="r", suite_name="s", suite_path="p", suite_sha256="0",
                   started_at="t", command=[])
    cases = [CaseResult("sleep/infer[]", "sleep", "infer", {}, {}, "skipped",
                        budget={"allocator": "steady"})]
    record = RunRecord(run=info, fingerprint={}, cases=cases)
    assert 'allocator = "steady": glibc malloc pinned' in render_report(record)
    assert "allocator = &quot;steady&quot;: glibc malloc pinned" in render_html(record)
    cases[0].budget = {}
    assert "allocator: not recorded" in render_report(record)
