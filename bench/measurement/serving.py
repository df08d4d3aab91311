"""Inference as it is served: MLCommons' LoadGen drives the case's phase as its system under
test (SUT), inside the isolated worker.

LoadGen issues the queries (single_stream: one sample at a time, the next when it returns;
multi_stream: queries of ``batch_size`` samples, likewise; server: single samples at
Poisson arrivals of a target rate; offline: every sample at once) and measures each
query's latency from its issue to the SUT's ``QuerySamplesComplete``. The SUT here is one
serving thread with a dynamic batcher (single- and multi-stream: LoadGen's issue callback
serves each query itself, LoadGen waiting for it anyway): a batch closes at
``batch_size`` samples or ``max_wait_ms`` after its first sample arrived (server; the
other scenarios never wait), and is one ``Phase.serve(n)`` call (then a device
synchronize). LoadGen's figures are read
from its detail log (``:::MLLOG`` lines); its summary log is kept in the record.

Server capacity (``server_qps = 0``): the highest arrival rate whose latency percentile
stays within the bound, found by bracketing from the measured service rate (doubling or
halving) and geometric bisection to ``capacity_tolerance``, each probe a LoadGen run.
A probe meets the bound when LoadGen's performance constraints (the percentile within the
bound), minimum duration and minimum query count are all met. LoadGen's early-stopping
rule (part of its VALID verdict) needs thousands of queries to vouch for a p99, more than
a CPU suite's scaled-down runs hold; it is recorded beside, not required. Likewise a p99
of a few hundred queries (one seeded schedule) reads below the stationary p99, so a p99
capacity from short runs overstates what a long run sustains: bound p90 on short runs, or
raise ``min_queries`` into the thousands for p99 (tests/engine/test_serving.py shows both).

Token serving (a phase that ``serves_tokens``: generate): LoadGen runs with
``use_token_latencies``. The SUT's ``serve(n, first_token)`` calls back when the batch's
first new tokens reach the host, and the SUT reports them (``FirstTokenComplete``), then
completes each sample with its token count, so LoadGen measures TTFT (issue to first token)
and TPOT ((latency - TTFT) / (tokens - 1)) per sample and holds a server to its TTFT and
TPOT bounds (``ServingSpec.ttft_bound_ms``, ``tpot_bound_ms``, at ``latency_percentile``)
instead of the latency bound. The SUT counts the samples whose own TTFT and TPOT met both
bounds: goodput is LoadGen's completed rate times their share.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.measurement.energy import EnergyMeter
from bench.results.schema import EnergyResult, LoadGenRun, ServingResult
from bench.spec.model import ServingSpec

# The SUT keeps at most this many raw per-sample latencies of a run; the record keeps
# every k-th of them in arrival order, at most RECORDED_LATENCY_SAMPLES (the CDF's points).
MAX_LATENCY_SAMPLES = 200_000
RECORDED_LATENCY_SAMPLES = 5_000
# Warm-up before the first LoadGen run: every batch size a run can serve, this many times.
WARMUP_ROUNDS = 3
# Service-rate estimate: timed calls of the full batch (after warm-up).
ESTIMATE_CALLS = 5
_PERCENTILES = {"p50": "50.00", "p90": "90.00", "p95": "95.00", "p97": "97.00",
                "p99": "99.00", "p99.9": "99.90"}
_SCENARIO_NAMES = {"single_stream": "SingleStream", "multi_stream": "MultiStream",
                   "server": "Server", "offline": "Offline"}


def _loadgen() -> Any:
    import mlperf_loadgen  # the mlcommons-loadgen wheel; imported in workers only

    return mlperf_loadgen


@dataclass
class BatchingSUT:
    """LoadGen's issue callback queues samples; one thread serves them in batches. With
    ``inline`` (single- and multi-stream, where LoadGen waits for each query before the
    next) the callback serves the query itself: no thread hand-off on the latency path."""

    serve: Callable[[int], object]
    sync: Callable[[], None]
    max_batch: int
    max_wait_s: float
    inline: bool = False
    # The phase's session (inference mode, autocast): thread-local in torch, so entered on
    # the thread that serves (the SUT thread once; LoadGen's issue thread per query).
    session: Callable[[], Any] = contextlib.nullcontext
    # Token serving (a generate phase): ``serve(n, first_token)`` calls ``first_token`` when
    # the batch's first new tokens reach the host and returns the tokens made per sample;
    # the SUT reports the first token to LoadGen (``FirstTokenComplete``) and each
    # sample's token count with its completion.
    tokens: bool = False
    # Token serving's bounds (TTFT, TPOT in seconds): samples meeting both are counted
    # (goodput); None: not counted.
    token_bounds_s: tuple[float, float] | None = None
    meeting_bounds: int = 0
    latencies: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    # Token serving: each sample's TTFT (issue to first token) and TPOT ((latency - TTFT)
    # / (tokens - 1), LoadGen's formula), as the SUT saw them, in completion order.
    ttfts: list[float] = field(default_factory=list)
    tpots: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: collections.deque[tuple[Any, float]] = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="sut", daemon=True)
        self._thread.start()

    def issue(self, samples: list[Any]) -> None:
        now = time.perf_counter()
        if self.inline:
            with self.session():
                self._serve_batch([(s.id, now) for s in samples])
            return
        with self._ready:
            self._queue.extend((s.id, now) for s in samples)
            self._ready.notify()

    def flush(self) -> None:
        """LoadGen's flush: nothing is held back beyond max_wait anyway."""

    def _next_batch(self) -> list[tuple[Any, float]] | None:
        with self._ready:
            while not self._queue and not self._closing:
                self._ready.wait()
            if not self._queue:
                return None
            deadline = self._queue[0][1] + self.max_wait_s
            while len(self._queue) < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._ready.wait(left)
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _loop(self) -> None:
        with self.session():
            while (batch := self._next_batch()) is not None:
                self._serve_batch(batch)

    def _serve_batch(self, batch: list[tuple[Any, float]]) -> None:
        lg = _loadgen()
        first: list[float] = []

        def first_token() -> None:
            first.append(time.perf_counter())
            lg.FirstTokenComplete([lg.QuerySampleResponse(i, 0, 0) for i, _ in batch])

        n_tokens = 0
        try:
            if self.tokens:
                n_tokens = int(self.serve(len(batch), first_token))
            else:
                self.serve(len(batch))
            self.sync()
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self._error = self._error or exc
        done = time.perf_counter()
        extra = (n_tokens,) if self.tokens else ()
        lg.QuerySamplesComplete([lg.QuerySampleResponse(i, 0, 0, *extra) for i, _ in batch])
        self.batches.append(len(batch))
        ttfts = tpots = ()
        if self.tokens and first and n_tokens > 1:
            ttfts = [first[0] - arrived for _, arrived in batch]
            tpots = [(done - first[0]) / (n_tokens - 1)] * len(batch)
            if self.token_bounds_s is not None:
                ttft_bound, tpot_bound = self.token_bounds_s
                self.meeting_bounds += sum(t <= ttft_bound and p <= tpot_bound
                                           for t, p in zip(ttfts, tpots, strict=True))
        if len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.extend(done - arrived for _, arrived in batch)
            self.ttfts.extend(ttfts)
            self.tpots.extend(tpots)

    def close(self) -> None:
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error


def read_detail_log(path: Path) -> dict[str, Any]:
    """LoadGen's ``mlperf_log_detail.txt``: key -> value of its ``:::MLLOG`` JSON lines."""
    values: dict[str, Any] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(":::MLLOG "):
            entry = json.loads(line[len(":::MLLOG "):])
            values[entry["key"]] = entry["value"]
    return values


# LoadGen's throughput key by scenario (multi-stream reports none: samples over the run).
_RATE_KEYS = {"server": "result_completed_samples_per_sec",
              "offline": "result_samples_per_second",
              "single_stream": "result_qps_with_loadgen_overhead"}


def _latencies_ms(log: dict[str, Any], extremes: str,
                  percentile: str) -> dict[str, float] | None:
    """min, mean, the percentiles and max of one LoadGen latency (ns -> ms), its keys
    ``extremes`` (formatted with min, mean, max) and ``percentile`` (with 50.00...); None
    where LoadGen logged none."""
    if extremes.format("mean") not in log:
        return None
    return {"min": log[extremes.format("min")] / 1e6, "mean": log[extremes.format("mean")] / 1e6,
            **{k: log[percentile.format(v)] / 1e6 for k, v in _PERCENTILES.items()
               if percentile.format(v) in log},
            "max": log[extremes.format("max")] / 1e6}


def run_from_log(scenario: str, target_qps: float | None, log: dict[str, Any],
                 sut: BatchingSUT, duration_s: float,
                 energy: EnergyResult | None) -> LoadGenRun:
    """One LoadGenRun from the detail log's keys (latencies in ns -> ms). Only server has a
    latency bound (LoadGen's performance constraint: the latency percentile, or with token
    latencies the TTFT and TPOT percentiles); the other scenarios meet theirs when
    LoadGen's minimum duration and query count are met."""
    latency = _latencies_ms(log, "result_{}_latency_ns", "result_{}_percentile_latency_ns")
    if latency is None:
        raise ValueError("LoadGen's detail log has no latency figures")
    constraints = log.get("result_perf_constraints_met")
    met = [log.get("result_min_duration_met"), log.get("result_min_queries_met")]
    if scenario == "server":
        met.append(constraints)
    samples = sum(sut.batches)
    rate = log.get(_RATE_KEYS.get(scenario, ""))
    ttft = tpot = tokens_per_s = None
    if sut.tokens:
        # LoadGen's token figures: TTFT (none offline), TPOT and the completed token rate.
        ttft = _latencies_ms(log, "result_first_token_{}_latency_ns",
                             "result_first_token_{}_percentile_latency_ns")
        tpot = _latencies_ms(log, "result_time_to_output_token_{}",
                             "result_time_per_output_token_{}_percentile_ns")
        token_rate = log.get("result_completed_tokens_per_second",
                             log.get("result_tokens_per_second"))
        tokens_per_s = None if token_rate is None else float(token_rate)
    samples_per_s = float(rate) if rate is not None else samples / duration_s
    # Goodput: the completed rate's share of samples that met both token bounds.
    goodput = samples_per_s * sut.meeting_bounds / samples \
        if sut.token_bounds_s is not None and samples else None
    return LoadGenRun(
        scenario=scenario, target_qps=target_qps, validity=str(log.get("result_validity")),
        invalid_reason=log.get("result_invalid_reason") or None,
        perf_constraints_met=constraints, min_duration_met=met[0], min_queries_met=met[1],
        early_stopping_met=log.get("early_stopping_met"),
        meets_bound=all(m is True for m in met),
        samples_per_s=samples_per_s,
        scheduled_samples_per_s=log.get("result_scheduled_samples_per_sec"),
        queries=int(log.get("result_query_count", len(sut.batches))), samples=samples,
        latency_ms=latency, mean_batch=samples / len(sut.batches) if sut.batches else 0.0,
        duration_s=duration_s, energy=energy, ttft_ms=ttft, tpot_ms=tpot,
        tokens_per_s=tokens_per_s,
        requests_meeting_bounds=sut.meeting_bounds if sut.token_bounds_s else None,
        goodput_per_s=goodput)


@dataclass
class ServedPhase:
    """What a LoadGen run needs of the case: its phase's ``serve``, the device's
    synchronize, and the scenario's settings."""

    serve: Callable[[int], object]
    sync: Callable[[], None]
    device: str
    spec: ServingSpec
    session: Callable[[], Any]  # the phase's session, entered on the serving thread
    batch: int  # batch_size: server's max batch, offline's batch, multi-stream's query
    expected_batch_s: float  # measured: one call at the full batch
    expected_sample_s: float  # measured: one call of one sample
    tokens: bool = False  # the phase serves tokens (Phase.serves_tokens)


def loadgen_run(served: ServedPhase, scenario: str,
                target_qps: float | None = None) -> tuple[LoadGenRun, BatchingSUT, str]:
    """One LoadGen test of ``scenario``: its run, the SUT (its raw latencies), the summary
    log."""
    lg = _loadgen()
    spec = served.spec
    settings = lg.TestSettings()
    settings.scenario = getattr(lg.TestScenario, _SCENARIO_NAMES[scenario])
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(spec.min_duration_s * 1000)
    settings.min_query_count = spec.min_queries
    # A bound on a run that falls behind (overloaded server probes drain their queue).
    settings.max_duration_ms = int(spec.min_duration_s * 1000 * 20)
    wait = 0.0
    # LoadGen pre-generates min_duration / expected latency queries (offline: expected QPS
    # x min_duration samples): estimates on the fast side, so a run is never cut short.
    if scenario == "single_stream":
        settings.single_stream_expected_latency_ns = max(1, int(served.expected_sample_s
                                                                * 0.5e9))
        settings.single_stream_target_latency_percentile = spec.latency_percentile
    elif scenario == "multi_stream":
        settings.multi_stream_samples_per_query = served.batch
        settings.multi_stream_expected_latency_ns = max(1, int(served.expected_batch_s * 0.5e9))
        settings.multi_stream_target_latency_percentile = spec.latency_percentile
    elif scenario == "server":
        settings.server_target_qps = float(target_qps)
        settings.server_target_latency_ns = int(spec.latency_bound_ms * 1e6)
        settings.server_target_latency_percentile = spec.latency_percentile
        if served.tokens:
            settings.ttft_latency = int(spec.ttft_bound_ms * 1e6)
            settings.tpot_latency = int(spec.tpot_bound_ms * 1e6)
        wait = spec.max_wait_ms / 1000
    else:
        settings.offline_expected_qps = 1.5 * served.batch / served.expected_batch_s
    settings.use_token_latencies = served.tokens
    batch = 1 if scenario == "single_stream" else served.batch
    bounds = (spec.ttft_bound_ms / 1e3, spec.tpot_bound_ms / 1e3) \
        if served.tokens and spec.has_token_bounds else None
    sut = BatchingSUT(served.serve, served.sync, batch, wait,
                      inline=scenario in ("single_stream", "multi_stream"),
                      session=served.session, tokens=served.tokens, token_bounds_s=bounds)
    handle = lg.ConstructSUT(sut.issue, sut.flush)
    qsl = lg.ConstructQSL(spec.sample_count, spec.sample_count, lambda _: None,
                          lambda _: None)
    with tempfile.TemporaryDirectory(prefix="loadgen-") as folder:
        log_settings = lg.LogSettings()
        log_settings.log_output.outdir = folder
        log_settings.log_output.copy_summary_to_stdout = False
        log_settings.enable_trace = False
        started = time.perf_counter()
        try:
            with EnergyMeter(served.device) as meter:
                lg.StartTestWithLogSettings(handle, qsl, settings, log_settings)
        finally:
            lg.DestroyQSL(qsl)
            lg.DestroySUT(handle)
            sut.close()
        duration = time.perf_counter() - started
        log = read_detail_log(Path(folder) / "mlperf_log_detail.txt")
        summary = (Path(folder) / "mlperf_log_summary.txt").read_text(errors="replace")
    run = run_from_log(scenario, target_qps, log, sut, duration,
                       meter.result(sum(sut.batches)))
    return run, sut, summary


def find_capacity(probe: Callable[[float], LoadGenRun], start_qps: float, tolerance: float,
                  max_probes: int) -> tuple[float | None, str]:
    """The highest rate ``probe`` reports as meeting the bound: from ``start_qps`` double
    (while it meets) or halve (while it does not) to a bracket, then bisect it
    geometrically until high / low <= 1 + tolerance or ``max_probes`` runs."""
    low = high = None
    rate, probes = start_qps, 0
    while probes < max_probes and (low is None or high is None):
        probes += 1
        if probe(rate).meets_bound:
            low, rate = rate, rate * 2
        else:
            high, rate = rate, rate / 2
    while probes < max_probes and low is not None and high is not None \
            and high / low > 1 + tolerance:
        probes += 1
        rate = math.sqrt(low * high)
        if probe(rate).meets_bound:
            low = rate
        else:
            high = rate
    if low is None:
        return None, f"no probe met the bound (lowest tried: {high:.4g} queries/s)"
    if high is None:
        return low, f"every probe met the bound: at least {low:.4g} queries/s (probes ran out)"
    converged = high / low <= 1 + tolerance
    return low, (f"bracketed within [{low:.4g}, {high:.4g}) queries/s"
                 + ("" if converged else f" after {max_probes} probes (not to tolerance)"))


def _sync_for(device: str) -> Callable[[], None]:
    if device == "cuda":
        import torch  # the worker has it loaded; kept out of the parent's reports

        return torch.cuda.synchronize
    return lambda: None


def _timed(call: Callable[[], object], sync: Callable[[], None], times: int) -> float:
    """Median seconds of ``times`` calls (each synchronized)."""
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        sync()
        durations.append(time.perf_counter() - started)
    return sorted(durations)[len(durations) // 2]


def serve_scenario(scenario: str, phase: Any, spec: ServingSpec, batch: int,
                   device: str) -> ServingResult:
    """Warm the phase up, estimate its service times, run the scenario's LoadGen test(s)."""
    sync = _sync_for(device)
    # Server batches take any size; offline's last batch is what is left; single- and
    # multi-stream serve one size (and 1 for the service-time estimate).
    sizes = list(range(1, batch + 1)) if scenario in ("server", "offline") \
        else sorted({1, batch})
    phase.prepare_serving(sizes)
    started = time.perf_counter()
    phase.serve(1)
    sync()
    cold = time.perf_counter() - started
    # Warmed: every size a server batch can have; elsewhere the sizes that run (offline's
    # one short last batch is not).
    warmed = sizes if scenario == "server" else sorted({1, batch})
    for _ in range(WARMUP_ROUNDS):
        for n in warmed:
            phase.serve(n)
            sync()
    tokens = bool(getattr(phase, "serves_tokens", False))
    served = ServedPhase(phase.serve, sync, device, spec, phase.session, batch,
                         expected_batch_s=_timed(lambda: phase.serve(batch), sync,
                                                 ESTIMATE_CALLS),
                         expected_sample_s=_timed(lambda: phase.serve(1), sync,
                                                  ESTIMATE_CALLS), tokens=tokens)
    outcomes: list[tuple[LoadGenRun, BatchingSUT, str]] = []

    def probe(qps: float | None) -> LoadGenRun:
        outcomes.append(loadgen_run(served, scenario, qps))
        return outcomes[-1][0]

    capacity = method = None
    if scenario != "server":
        probe(None)
    elif spec.server_qps > 0:
        probe(spec.server_qps)
    else:
        # The service rate at the full batch: the most a server could take.
        start = batch / served.expected_batch_s
        capacity, method = find_capacity(probe, start, spec.capacity_tolerance,
                                         spec.max_probes)
    runs = [o[0] for o in outcomes]
    headline = len(runs) - 1
    if capacity is not None:
        headline = max(i for i, r in enumerate(runs) if r.meets_bound and r.target_qps == capacity)
        # The rate LoadGen's Poisson schedule delivered (its fixed seed's draws run a few
        # percent light of the target on short runs), not the rate asked for.
        capacity = runs[headline].scheduled_samples_per_s or capacity
    run, sut, summary = outcomes[headline]
    latencies = sut.latencies
    stride = max(1, math.ceil(len(latencies) / RECORDED_LATENCY_SAMPLES))
    settings = {**spec.to_dict(), "max_batch": 1 if scenario == "single_stream" else batch,
                "samples_per_query": batch if scenario == "multi_stream" else 1,
                "max_wait_ms": spec.max_wait_ms if scenario == "server" else 0.0,
                "expected_batch_s": served.expected_batch_s,
                "latency_samples_stride": stride,
                "expected_sample_s": served.expected_sample_s}
    result = ServingResult(
        scenario=scenario, loadgen_version=_version(), settings=settings,
        sut="one serving thread, dynamic batching (a batch closes at max_batch samples or "
            "max_wait_ms after its first arrived), each batch one Phase.serve(n) call and a "
            "device synchronize; LoadGen's issue callback only queues",
        cold_start_s=cold,
        warmup=f"{WARMUP_ROUNDS} rounds of the batch sizes {warmed[0]}..{warmed[-1]} "
               f"({len(warmed)}), "
               f"then {ESTIMATE_CALLS} timed calls at batch 1 and {batch} (the service-time "
               "estimates LoadGen's expected latency/QPS settings and the capacity search "
               "start from)",
        runs=runs, headline=headline, capacity_qps=capacity,
        capacity_method=None if method is None else
        "geometric bisection over LoadGen server runs from the measured full-batch service "
        "rate; the capacity is the scheduled rate (LoadGen's result_scheduled_samples_per_sec) "
        "of the fastest run that met the bound; a rate meets the bound when its "
        f"{_bound_text(spec, tokens)} (LoadGen's performance constraint), with minimum "
        f"duration and query count met: {method}",
        latency_samples_s=latencies[::stride], summary_log=summary,
        ttft_samples_s=sut.ttfts[::stride], tpot_samples_s=sut.tpots[::stride])
    if tokens:
        result.sut += ("; token serving: the SUT reports each batch's first new tokens to "
                       "LoadGen (FirstTokenComplete) when they reach the host, and each "
                       "sample's token count with its completion (use_token_latencies): "
                       "LoadGen's TTFT is issue to first token, its TPOT (latency - TTFT) / "
                       "(tokens - 1)")
    return result


def _bound_text(spec: ServingSpec, tokens: bool) -> str:
    p = f"p{spec.latency_percentile * 100:g}"
    if tokens:
        return f"{p} TTFT <= {spec.ttft_bound_ms:g} ms and {p} TPOT <= {spec.tpot_bound_ms:g} ms"
    return f"{p} latency <= {spec.latency_bound_ms:g} ms"


def _version() -> str:
    try:
        return version("mlcommons-loadgen")
    except Exception:  # noqa: BLE001 - a source build without metadata
        return "unknown"
