"""pytest front door: the cases of suite files as pytest items, timed by the engine.

    pytest suites/ --benchmark-only [-k quick] [--benchmark-json=out.json]
        [--bench-select device=cpu] [--benchmark-compare] [--benchmark-compare-fail=median:10%]

Each ``suites/*.toml`` file is collected (only files in a directory named ``suites``);
each of its cases is an item named ``workload-phase[:label][axis values]``, for example
``digits_cnn-infer[cpu-fp32-bs32]``. An item runs its case in the engine's isolated
worker(s), started by the session's launcher (bench.launch.launcher.LocalLauncher, as
``bench run`` starts them: on a CPU forked from fork servers, one per workload) and hands the
per-trial step times to pytest-benchmark's fixture in pedantic mode, through a replay
clock, so pytest-benchmark's statistics are computed from our trials; nothing is timed by
pytest-benchmark itself. Our figures (throughput, latency percentiles, memory, accuracy,
MFU, status) go into ``extra_info``, the environment fingerprint into ``machine_info``.
Cases that cannot run here are pytest skips, failed cases pytest failures, with the reason.
Each benchmark of a suite is one pytest-benchmark group (``SUITE workload/phase[:label]``),
so its variants are tabled side by side. Without pytest-benchmark (not installed, or
``-p no:benchmark``) the items still run and pass or fail on their records.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.launch.launcher import LocalLauncher
from bench.measurement.fingerprint import fingerprint, machine_name
from bench.orchestrate.plan import plan_suite
from bench.results.store import json_safe
from bench.spec import load_suite
from bench.spec.expand import parse_select

SHORT_AXES = {"batch_size": "bs", "seq_len": "seq", "accum_steps": "acc"}
_LAUNCHER = pytest.StashKey[LocalLauncher]()


def launcher(config: pytest.Config) -> LocalLauncher:
    """The session's launcher, as a sweep's (``bench run``): fork servers started on first
    use, closed when the session ends."""
    if _LAUNCHER not in config.stash:
        config.stash[_LAUNCHER] = LocalLauncher(per_preload=True)
    return config.stash[_LAUNCHER]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bench(model, **axes): run the model's case through the engine (as the "
                   "bench_model fixture does); the test gets its record as bench_result")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _LAUNCHER in config.stash:
        config.stash[_LAUNCHER].close()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "bench suites (the benchmark engine)")
    group.addoption("--bench-suites", action="store_true", default=False,
                    help="collect suites/*.toml files as benchmark items (or set the ini "
                         "option bench_suites = true)")
    group.addoption("--bench-select", action="append", default=[], metavar="AXIS=V1,V2",
                    help="keep only suite cases with these axis values (repeatable)")
    parser.addini("bench_suites", type="bool", default=False,
                  help="collect suites/*.toml files as benchmark items")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    config = parent.config
    opted_in = config.getoption("--bench-suites") or config.getini("bench_suites")
    if opted_in and file_path.suffix == ".toml" and file_path.parent.name == "suites":
        return SuiteFile.from_parent(parent, path=file_path)
    return None


# pytest-benchmark may be absent (our fixture then still runs and reports): its hooks are
# optional, and the fixture asks for its `benchmark` fixture only when it is installed.
try:
    import pytest_benchmark  # noqa: F401
    HAS_PYTEST_BENCHMARK = True
except ImportError:
    HAS_PYTEST_BENCHMARK = False


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config,
                                         machine_info: dict[str, Any]) -> None:
    fp = fingerprint()
    machine_info["bench_fingerprint"] = fp
    machine_info["bench_machine"] = machine_name(fp)


def _value(axis: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{axis}" if value else f"no-{axis}"
    return f"{SHORT_AXES.get(axis, '')}{value}"


def item_name(case: Any) -> str:
    """``workload-phase[:label][v1-v2-...]`` from the axes the suite named."""
    values = "-".join(_value(axis, value) for axis, value in case.named_axes())
    # The case id's head with "-" for "/" (a "/" would split pytest's node id).
    head = case.benchmark_key.replace("/", "-", 1)
    return head + (f"[{values}]" if values else "")


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        suite = load_suite(self.path)
        select = parse_select(self.config.getoption("--bench-select"), "--bench-select")
        planned = plan_suite(suite, select)
        names = [item_name(p.spec) for p in planned]
        for plan, name in zip(planned, names, strict=True):
            if names.count(name) > 1:  # short names collide: fall back to the case id
                name = plan.case_id
            yield pytest.Function.from_parent(
                self, name=name, callobj=_case_test(
                    plan.spec, plan.skip_reason, suite.name,
                    self.config.pluginmanager.hasplugin("benchmark")),
                keywords={suite.name: True})


def _case_test(case: Any, skip_reason: str | None, suite: str,  # noqa: ANN202 - a test
               with_benchmark: bool):
    """The item's test: with pytest-benchmark's fixture where its plugin is active (its
    --benchmark-only keeps only tests that ask for it), else without (-p no:benchmark, or
    not installed: the case still runs and passes or fails on its own record)."""

    def test_case_benchmarked(benchmark: Any, request: pytest.FixtureRequest) -> None:
        run_case_item(request, benchmark)

    def test_case(request: pytest.FixtureRequest) -> None:
        run_case_item(request, None)

    def run_case_item(request: pytest.FixtureRequest, benchmark: Any | None) -> None:
        if skip_reason:
            pytest.skip(skip_reason)
        if benchmark is not None:
            # One pytest-benchmark group per benchmark of the suite: its variants side by side.
            benchmark.group = f"{suite} {case.benchmark_key}"
        result = launcher(request.config).run_case(case)
        if result.status == "skipped":
            if benchmark is not None:
                benchmark.extra_info.update(extra_info(result))
            pytest.skip(result.reason or "skipped")
        hand_over(result, benchmark, "")
        if result.status != "ok":  # contended: the figures stand, with a warning beside
            warnings.warn(f"{case.case_id}: {result.status}: {result.reason}", stacklevel=1)
        if result.accuracy is not None and result.accuracy.passed is False:
            pytest.fail("accuracy target missed: " + "; ".join(result.accuracy.failures),
                        pytrace=False)

    chosen = test_case_benchmarked if with_benchmark else test_case
    chosen.__doc__ = f"{case.case_id} through the engine's isolated worker"
    return chosen


class ReplayClock:
    """A clock for pytest-benchmark's runner that reports our measured trials: each
    (start, end) pair of calls is exactly one trial's mean step time apart."""

    def __init__(self, samples: list[float]) -> None:
        self._samples = list(samples)
        self._now = 0.0
        self._calls = 0

    def __call__(self) -> float:
        if self._calls % 2 == 1:
            self._now += self._samples[self._calls // 2]
        self._calls += 1
        return self._now

    def __repr__(self) -> str:
        return "bench.ReplayClock(trial means from the engine's worker)"


def hand_over(result: Any, benchmark: Any | None, failure_prefix: str) -> None:
    """A case's record to pytest: a failure when it was not measured, else its trials and
    figures to pytest-benchmark's fixture (when there is one)."""
    if benchmark is not None:
        benchmark.extra_info.update(extra_info(result))
    if not result.measured:
        if benchmark is not None:
            # No timing to report (the failure says why); marks the fixture as used, so
            # pytest-benchmark does not warn that it was forgotten.
            benchmark._mode = "not timed: the case failed"
        pytest.fail(f"{failure_prefix}{result.status}: {result.reason}", pytrace=False)
    if benchmark is not None:
        feed(benchmark, result.timing.trial_means_s)


def feed(benchmark: Any, samples: list[float]) -> None:
    if getattr(benchmark, "disabled", False):
        return
    # pytest-benchmark's runner reads the fixture's clock; ours replays the worker's trials.
    benchmark._timer = ReplayClock(samples)
    benchmark.pedantic(lambda: None, rounds=len(samples), iterations=1, warmup_rounds=0)


def extra_info(result: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"case_id": result.case_id, "status": result.status,
                            "reason": result.reason}
    if result.timing is not None:
        t = result.timing
        info.update(median_s=t.median_s, ci95_s=[t.ci_low_s, t.ci_high_s], cv=t.cv,
                    cold_start_s=t.cold_start_s, latency_s=t.latency_s,
                    timer=t.timer, statistic=t.statistic)
    if result.throughput is not None:
        info["throughput"] = {"value": result.throughput.value, "unit": result.throughput.unit,
                              "ci95": [result.throughput.ci_low, result.throughput.ci_high]}
    tta = result.time_to_accuracy
    if tta is not None:  # the olympic scores; every seed's run stays in the result file
        info["time_to_accuracy"] = {
            "target": tta.target, "converged": tta.converged, "seeds": len(tta.runs),
            "score_s": tta.score_s, "score_samples": tta.score_samples,
            "score_epochs": tta.score_epochs, "method": tta.method}
    for name in ("memory", "accuracy", "compute", "model", "classes"):
        value = getattr(result, name)
        if value is not None:
            info[name] = dataclasses.asdict(value)
    if result.warnings:
        info["warnings"] = result.warnings
    return json_safe(info)


class BenchModel:
    """The ``bench_model`` fixture: run your model's case in an isolated worker, as a suite
    item does, and get its record to assert on::

        def test_my_model_is_fast_enough(bench_model):
            result = bench_model("mymodels:build", precision="bf16", batch_size=32)
            assert result.throughput.value > 1000            # samples/s
            assert result.timing.latency_s["p99"] < 0.020
            assert result.accuracy.metrics["fidelity_mean_cos"] > 0.99

        def test_my_llm_answers_quickly(bench_model):  # a causal LM generating text
            result = bench_model({"gguf": "/models/my.gguf"}, input_tokens=128, output_tokens=32)
            assert result.generation.ttft_s["p99"] < 0.5

    ``python_path`` defaults to the test file's folder. With pytest-benchmark installed the
    trials feed its ``benchmark`` fixture (its table, --benchmark-json, compare), as the
    suite items do; ``--benchmark-only`` keeps these tests."""

    def __init__(self, request: pytest.FixtureRequest, benchmark: Any | None) -> None:
        self._request = request
        self._benchmark = benchmark

    def __call__(self, factory: str | dict[str, str], *, python_path: str | Path | None = None,
                 budget: dict[str, Any] | None = None, **axes: Any) -> Any:
        from bench.api import one_model_case  # on use: a plugin loaded by every pytest run

        planned = one_model_case(factory, python_path=python_path or self._request.path.parent,
                                 budget=budget, **axes)
        if planned.skip_reason:
            pytest.skip(planned.skip_reason)
        result = launcher(self._request.config).run_case(planned.spec)
        hand_over(result, self._benchmark, f"{result.case_id}: ")
        return result


if HAS_PYTEST_BENCHMARK:
    @pytest.fixture
    def bench_model(request: pytest.FixtureRequest, benchmark: Any) -> BenchModel:
        """Run your model through the engine; the figures also feed pytest-benchmark."""
        return BenchModel(request, benchmark)
else:
    @pytest.fixture
    def bench_model(request: pytest.FixtureRequest) -> BenchModel:
        """Run your model through the engine (pytest-benchmark is not installed)."""
        return BenchModel(request, None)


@pytest.fixture
def bench_result(request: pytest.FixtureRequest, bench_model: BenchModel) -> Any:
    """The record of the case a ``@pytest.mark.bench(model, **axes)`` marker names, run as
    ``bench_model(model, **axes)`` runs it::

        @pytest.mark.bench("mymodels:build", precision="bf16", batch_size=32)
        def test_bf16_is_fast_enough(bench_result):
            assert bench_result.throughput.value > 1000
    """
    marker = request.node.get_closest_marker("bench")
    if marker is None or len(marker.args) != 1:
        pytest.fail("bench_result needs @pytest.mark.bench(model, **axes) on the test: the "
                    "model (a factory 'module:function' or a model table) and its axes",
                    pytrace=False)
    return bench_model(marker.args[0], **marker.kwargs)
