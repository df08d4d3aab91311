"""Python entry points for notebooks, scripts and tests: your model through the same engine.

    import bench

    run = bench.run_model("mymodels:build", precision=["fp32", "bf16"], batch_size=[1, 32])
    print(run.table())              # the report `bench report` prints
    run.write_html("report.html")   # the report `bench report --html` writes
    run.record.cases[0].throughput  # every figure, typed (bench.results.schema)

Each case runs in its own isolated worker process, exactly as ``bench run`` runs a suite
file holding ``model = "mymodels:build"``; the run is written to ``out`` (a temporary file by
default) as it goes. Matrix values may be single values or lists.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.files import write_text_atomically
from bench.orchestrate.plan import PlannedCase, plan_suite
from bench.orchestrate.sweep import run_suite
from bench.reports.html import render_html
from bench.reports.table import render_report
from bench.results.schema import CaseResult, RunRecord
from bench.spec.loader import suite_from_data
from bench.spec.model import SuiteSpec


@dataclass
class ModelRun:
    """A finished run: its record and the file it was written to."""

    record: RunRecord
    path: Path

    def table(self, fmt: str = "github") -> str:
        return render_report(self.record, fmt)

    def write_html(self, path: str | Path) -> Path:
        write_text_atomically(Path(path), render_html(self.record), "html")
        return Path(path)

    def case(self, case_id: str) -> CaseResult | None:
        return self.record.case(case_id)


def model_suite(factory: str | dict[str, str], *, python_path: str | Path | None = None,
                budget: dict[str, Any] | None = None, label: str | None = None,
                name: str | None = None, **matrix: Any) -> SuiteSpec:
    """The one-benchmark suite a suite file with ``model = FACTORY`` would give, validated by
    the same loader (bad input raises ``bench.errors.BenchInputError`` in one line).
    ``factory`` may also be a model table: ``{"gguf": "FILE.gguf"}`` or ``{"hf": "FOLDER",
    "task": "text-generation"}`` (a causal LM generating text), or another ``hf`` task."""
    benchmark: dict[str, Any] = {
        "model": factory,
        "matrix": {k: list(v) if isinstance(v, list | tuple) else [v] for k, v in matrix.items()}}
    if isinstance(factory, str):
        benchmark["python_path"] = str(python_path or ".")
    if label is not None:
        benchmark["label"] = label
    data: dict[str, Any] = {"benchmark": [benchmark]}
    if budget:
        data["budget"] = dict(budget)
    text = json.dumps(data, sort_keys=True, default=str)
    default = factory.replace(":", "-") if isinstance(factory, str) else \
        Path(next(iter(factory.values()), "model")).stem
    return suite_from_data(data, f"run_model({factory!r})", name or default,
                           hashlib.sha256(text.encode()).hexdigest(), Path.cwd())


def run_model(factory: str | dict[str, str], *, python_path: str | Path | None = None,
              out: str | Path | None = None, budget: dict[str, Any] | None = None,
              label: str | None = None, progress: bool = False, **matrix: Any) -> ModelRun:
    """Run ``factory`` (``"module:function"`` returning a ``bench.UserModel``, or a model
    table such as ``{"gguf": "FILE.gguf"}``: see ``model_suite``) over every combination of
    ``matrix`` (precision, backend, quantization, pruning, batch_size, seq_len, device,
    threads; for text generation input_tokens, output_tokens, kv_cache...) and return the
    run."""
    suite = model_suite(factory, python_path=python_path, budget=budget, label=label,
                        **matrix)
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="bench-run-model-")) / "run.json"
    store = run_suite(suite, out, overwrite=True, progress=progress)
    return ModelRun(store.record, Path(out))


def one_model_case(factory: str | dict[str, str], *, python_path: str | Path | None = None,
                   budget: dict[str, Any] | None = None, **axes: Any) -> PlannedCase:
    """The single case of ``factory`` at these axis values (one value each), planned: its
    spec and, if this machine cannot run it, why (the pytest fixture's case)."""
    planned = plan_suite(model_suite(factory, python_path=python_path, budget=budget, **axes))
    if len(planned) != 1:
        raise ValueError(f"give one value per axis: {len(planned)} cases from {axes}")
    return planned[0]
