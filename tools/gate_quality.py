"""Measure the regression gate's quality on this machine: false alarms and detections.

Runs a suite (default suites/smoke.toml) repeatedly through the engine, alternating
unchanged runs and runs slowed by a known fraction (the worker's BENCH_TEST_SLOWDOWN test
knob: every step spins for that fraction of its own duration), so machine drift hits both
kinds alike. Then gates:
- every pair of unchanged runs (each way round counts once): a speed regression there is a
  false alarm;
- every (unchanged baseline, slowed candidate) pair: a speed regression there is a
  detection.
Prints both rates per case and overall, under the default policy (or --policy).

    python tools/gate_quality.py [--suite suites/smoke.toml] [--unchanged 6] [--slowed 4]
        [--slowdown 0.10] [--processes 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
from collections import Counter

from tabulate import tabulate

from bench.measurement.fingerprint import fingerprint
from bench.reports.compare import compare_runs, geometric_mean
from bench.reports.gate import Policy, evaluate, load_policy
from bench.results.schema import RunInfo, RunRecord
from bench.runners.isolation import run_case
from bench.runners.worker import SLOWDOWN_ENV
from bench.spec import expand_suite, load_suite


def one_run(suite, processes: int, slowdown: float) -> RunRecord:
    if slowdown:
        os.environ[SLOWDOWN_ENV] = str(slowdown)
    else:
        os.environ.pop(SLOWDOWN_ENV, None)
    cases = []
    for planned in expand_suite(suite):
        if planned.skip_reason:
            continue
        spec = dataclasses.replace(planned.spec, budget=dataclasses.replace(
            planned.spec.budget, processes=processes))
        cases.append(run_case(spec))
    info = RunInfo(run_id=f"gate-quality-{time.time_ns()}", suite_name=suite.name,
                   suite_path=suite.path, suite_sha256=suite.sha256,
                   started_at=time.strftime("%Y-%m-%dT%H:%M:%S"), command=sys.argv)
    return RunRecord(run=info, fingerprint=fingerprint(suite.path), cases=cases)


def _interleaved(unchanged: list[RunRecord], slowed: list[RunRecord], order: list[str]):
    u, s = iter(unchanged), iter(slowed)
    for kind in order:
        yield next(s) if kind == "slowed" else next(u)


def speed_alarms(baseline: RunRecord, current: RunRecord, policy: Policy) -> set[str]:
    report = evaluate(compare_runs(baseline, current), policy)
    return {f.case_id for f in report.regressions if f.check == "speed"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/smoke.toml")
    parser.add_argument("--unchanged", type=int, default=6)
    parser.add_argument("--slowed", type=int, default=4)
    parser.add_argument("--slowdown", type=float, default=0.10)
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes pooled per case (the suite's budget.processes)")
    parser.add_argument("--policy", help="a gate policy file (default: bench gate's defaults)")
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    policy = load_policy(args.policy) if args.policy else Policy()
    suite = load_suite(args.suite)

    started = time.perf_counter()
    unchanged: list[RunRecord] = []
    slowed: list[RunRecord] = []
    order = ["unchanged"] * args.unchanged + ["slowed"] * args.slowed
    # Interleave: u s u s ... u u
    order = [k for pair in itertools.zip_longest(order[:args.unchanged], order[args.unchanged:])
             for k in pair if k]
    for i, kind in enumerate(order):
        record = one_run(suite, args.processes, args.slowdown if kind == "slowed" else 0.0)
        (slowed if kind == "slowed" else unchanged).append(record)
        print(f"run {i + 1}/{len(order)} ({kind}) done", file=sys.stderr)
    os.environ.pop(SLOWDOWN_ENV, None)

    case_ids = [c.case_id for c in unchanged[0].cases if c.status == "ok"]
    # Drift across the session: each run's geometric-mean step time against the first.
    first = {c.case_id: c.timing.median_s for c in unchanged[0].cases if c.timing}
    drift = []
    for kind, record in zip(order, [*_interleaved(unchanged, slowed, order)], strict=True):
        ratios = [c.timing.median_s / first[c.case_id] for c in record.cases
                  if c.timing and c.case_id in first]
        drift.append(f"{kind[0]}{geometric_mean(ratios) or float('nan'):.3f}")
    false_alarms: Counter[str] = Counter()
    detections: Counter[str] = Counter()
    null_pairs = list(itertools.combinations(range(len(unchanged)), 2))
    for i, j in null_pairs:
        false_alarms.update(speed_alarms(unchanged[i], unchanged[j], policy))
    slow_pairs = list(itertools.product(range(len(unchanged)), range(len(slowed))))
    for i, j in slow_pairs:
        detections.update(speed_alarms(unchanged[i], slowed[j], policy))
    rows = [[cid, f"{false_alarms[cid]}/{len(null_pairs)}",
             f"{detections[cid]}/{len(slow_pairs)}"] for cid in case_ids]
    n_null, n_slow = len(null_pairs) * len(case_ids), len(slow_pairs) * len(case_ids)
    total_fa, total_det = sum(false_alarms.values()), sum(detections.values())
    rows.append(["all cases", f"{total_fa}/{n_null} = {total_fa / max(n_null, 1):.1%}",
                 f"{total_det}/{n_slow} = {total_det / max(n_slow, 1):.1%}"])
    text = (f"suite {args.suite}; {args.unchanged} unchanged and {args.slowed} slowed "
            f"(+{args.slowdown:.0%}) runs, interleaved; budget.processes = {args.processes}; "
            f"policy: speed drop > {policy.speed_max_drop:.0%} and significant (p < "
            f"{policy.speed_alpha:g}, CI excludes 1); {time.perf_counter() - started:.0f} s\n"
            f"run-by-run step time vs the first run (u unchanged, s slowed): {' '.join(drift)}\n"
            + tabulate(rows, headers=["case", "false alarms (unchanged pairs)",
                                      f"detections of +{args.slowdown:.0%}"]) + "\n")
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
