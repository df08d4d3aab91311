"""Measure the regression gate's quality on this machine: false alarms and detections.

--design interleaved (default; what `bench ab` does): one long interleaved session with
three sides per case, each round running one worker process per side back to back in the
order U1 U2 S, then S U2 U1 (alternating over rounds and cases): U1 and U2 unchanged, S
slowed by a known fraction (the worker's BENCH_TEST_SLOWDOWN test knob). Every block of
--session-rounds consecutive rounds is one A/B session as `bench ab --rounds N` would run
it: gating U2 against U1 counts false alarms, S against U2 detections. Reported over the
disjoint sessions (independent) and over random subsets of rounds (a finer estimate of
the same rates), with each case's round-to-round spread of the paired ratio.

    python tools/gate_quality.py [--suite suites/smoke.toml] [--rounds 30]
        [--session-rounds 6] [--slowdown 0.10] [--keep DIR] [--from-dir DIR] [--out FILE]

--design runs (the earlier design, kept to show why it was replaced): separate runs
of the suite, alternating unchanged and slowed ones, gated pairwise from their trials.

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
import tempfile
import time
from collections import Counter

import numpy as np
from tabulate import tabulate

from bench.launch.isolation import WorkerCode
from bench.launch.launcher import LocalLauncher
from bench.measurement.fingerprint import fingerprint
from bench.orchestrate.interleave import Side, run_interleaved
from bench.orchestrate.plan import plan_suite
from bench.orchestrate.rounds import (
    DEFAULT_MAX_ROUNDS,
    DEFAULT_ROUNDS,
    DEFAULT_TARGET_HALF_WIDTH,
    SEQUENTIAL_MAX_ROUNDS,
    Stopping,
)
from bench.reports.compare import compare_runs, geometric_mean
from bench.reports.gate import Policy, evaluate, load_policy
from bench.results.schema import SLOWDOWN_ENV, RunInfo, RunRecord
from bench.results.store import load_run
from bench.spec import load_suite

SIDE_NAMES = ("unchanged-1", "unchanged-2", "slowed")


def one_run(suite, processes: int, slowdown: float) -> RunRecord:
    if slowdown:
        os.environ[SLOWDOWN_ENV] = str(slowdown)
    else:
        os.environ.pop(SLOWDOWN_ENV, None)
    cases = []
    with LocalLauncher(fork=False) as launcher:
        for planned in plan_suite(suite):
            if planned.skip_reason:
                continue
            spec = dataclasses.replace(planned.spec, budget=dataclasses.replace(
                planned.spec.budget, processes=processes))
            cases.append(launcher.run_case(spec))
    info = RunInfo.starting(suite, None, f"gate-quality-{time.time_ns()}")
    return RunRecord(run=info, fingerprint=fingerprint(suite.path), cases=cases)


def _interleaved(unchanged: list[RunRecord], slowed: list[RunRecord], order: list[str]):
    u, s = iter(unchanged), iter(slowed)
    for kind in order:
        yield next(s) if kind == "slowed" else next(u)


def speed_alarms(baseline: RunRecord, current: RunRecord, policy: Policy) -> set[str]:
    report = evaluate(compare_runs(baseline, current), policy)
    return {f.case_id for f in report.regressions if f.check == "speed"}


def speed_verdicts(baseline: RunRecord, current: RunRecord, policy: Policy) -> dict[str, str]:
    """Each case's speed verdict (regression, no regression, inconclusive, improvement)."""
    report = evaluate(compare_runs(baseline, current), policy)
    return {cid: v[0] for cid, v in report.verdicts.items()}


def case_subset(record: RunRecord, case_id: str, rounds: list[int]) -> RunRecord:
    """One case of the record, as a session of only these rounds would have written it."""
    case = record.case(case_id)
    kept = dataclasses.replace(case.rounds, medians_s=[case.rounds.medians_s[r] for r in rounds])
    return dataclasses.replace(record, cases=[dataclasses.replace(case, rounds=kept)])


def adaptive_session(chain: list[list[float]], order: list[int], stopping: Stopping,
                     ) -> list[int] | None:
    """The rounds, taken from ``order``, that bench ab's stopping rule would run for these
    sides; None when ``order`` runs out first."""
    taken: list[int] = []
    for r in order:
        taken.append(r)
        if not stopping.needs_another_round([[side[i] for i in taken] for side in chain]):
            return taken
    return None


def _rate(count: int, total: int) -> str:
    return f"{count}/{total} = {count / max(total, 1):.1%}" if total else "-"


def _interleaved_records(args: argparse.Namespace) -> tuple[dict[str, RunRecord], str]:
    """The three sides' records (U1, U2, slowed S): read back, or measured now."""
    if args.from_dir:
        return ({name: load_run(f"{args.from_dir}/{name}.json") for name in SIDE_NAMES},
                args.from_dir)
    here = WorkerCode.this_checkout()
    sides = [Side(SIDE_NAMES[0], here), Side(SIDE_NAMES[1], here),
             Side(SIDE_NAMES[2], WorkerCode(here.source, {SLOWDOWN_ENV: str(args.slowdown)}))]
    keep = args.keep or tempfile.mkdtemp(prefix="gate-quality-")
    chain = Stopping(args.rounds, args.rounds, time_budget_s=args.time_budget)
    runs = run_interleaved(args.suite, sides, chain, keep,
                           progress=lambda text: print(text, file=sys.stderr, flush=True))
    return dict(zip(SIDE_NAMES, runs, strict=True)), keep


def _sessions(chain: list[list[float]], total: int, stopping: Stopping,
              rng: np.random.Generator, resamples: int) -> dict[str, list[list[int]]]:
    """Sessions of one pair of sides: consecutive (d, independent) and drawn in random
    order from all the rounds (r)."""
    disjoint, start = [], 0
    while (session := adaptive_session(chain, list(range(start, total)), stopping)):
        disjoint.append(session)
        start = session[-1] + 1
    resampled = [adaptive_session(chain, rng.permutation(total).tolist(), stopping)
                 for _ in range(resamples)]
    return {"d": disjoint, "r": [s for s in resampled if s]}


def _case_sessions(records: dict[str, RunRecord], cid: str, policy: Policy,
                   args: argparse.Namespace, rng: np.random.Generator) -> tuple[list, dict]:
    """One case's gated sessions: U1 against U2 (unchanged: a regression is a false alarm)
    and U2 against S (slowed: a regression is a detection), each carved from the chain as
    a two-sided bench ab session would stop; its table row and the verdict counts."""
    chain = [list(records[name].case(cid).rounds.medians_s) for name in SIDE_NAMES]
    total = min(len(side) for side in chain)
    stopping = _stopping(args, policy)
    counts: dict[str, Counter] = {}
    mean_rounds = {}
    for kind, (a, b) in (("unchanged", (0, 1)), ("slowed", (1, 2))):
        sessions = _sessions([chain[a], chain[b]], total, stopping, rng, args.resamples)
        for label, chosen in sessions.items():
            tally = counts.setdefault(f"{kind}-{label}", Counter())
            for rounds in chosen:
                base, cur = (case_subset(records[SIDE_NAMES[i]], cid, rounds) for i in (a, b))
                tally[speed_verdicts(base, cur, policy).get(cid, "none")] += 1
                tally["sessions"] += 1
        mean_rounds[kind] = np.mean([len(s) for s in sessions["r"]]) if sessions["r"] \
            else float("nan")
    x, y, z = (np.asarray(side[:total]) for side in chain)
    row = [cid, f"{np.std(np.log(y / x), ddof=1):.3f}", f"{np.exp(np.mean(np.log(z / y))):.3f}",
           f"{mean_rounds['unchanged']:.1f} / {mean_rounds['slowed']:.1f}",
           *(_cell(counts[f"{kind}-{label}"], kind) for label in ("d", "r")
             for kind in ("unchanged", "slowed"))]
    return row, {"total_rounds": total, **counts}


def _cell(tally: Counter, kind: str) -> str:
    """unchanged: false alarms (+ inconclusive); slowed: detections (+ inconclusive)."""
    n = tally["sessions"]
    if not n:
        return "-"
    hit = tally["regression"]
    return f"{hit}/{n} = {hit / n:.1%} (+{tally['inconclusive']} inc.)"


def _stopping(args: argparse.Namespace, policy: Policy) -> Stopping:
    test = policy.sequential_test()
    rounds = args.session_rounds or (test.min_rounds if test else DEFAULT_ROUNDS)
    max_rounds = args.max_rounds or (SEQUENTIAL_MAX_ROUNDS if test else DEFAULT_MAX_ROUNDS)
    return Stopping(rounds, max(rounds, max_rounds), args.target_half_width, test)


def main_interleaved(args: argparse.Namespace, policy: Policy) -> str:
    started = time.perf_counter()
    records, source = _interleaved_records(args)
    case_ids = [c.case_id for c in records[SIDE_NAMES[0]].cases if c.status == "ok"]
    rng = np.random.default_rng(0)
    rows = []
    totals: dict[str, Counter] = {}
    total_rounds = None
    for cid in case_ids:
        row, counts = _case_sessions(records, cid, policy, args, rng)
        rows.append(row)
        total_rounds = min(total_rounds or counts["total_rounds"], counts["total_rounds"])
        for key, tally in counts.items():
            if key != "total_rounds":
                totals.setdefault(key, Counter()).update(tally)
    rows.append(["all cases", "", "", "", *(_cell(totals.get(f"{kind}-{label}", Counter()),
                                                  kind)
                                            for label in ("d", "r")
                                            for kind in ("unchanged", "slowed"))])
    stopping = _stopping(args, policy)
    return (f"suite {args.suite}; design: interleaved, {total_rounds} rounds of U1 U2 S / "
            f"S U2 U1 (one worker process each), S slowed by +{args.slowdown:.0%}; sessions "
            f"as bench ab runs them (two sides, stopping: {stopping.describe()['stopping']}; "
            f"rounds {stopping.rounds}-{stopping.max_rounds}): consecutive (disjoint, "
            f"independent) and {args.resamples} drawn in random order; gate policy: "
            f"{args.policy or 'bench gate defaults'}; raw records in {source}; "
            f"{time.perf_counter() - started:.0f} s\n"
            "sd log(U2/U1): round-to-round spread of one paired ratio; S/U2: measured "
            "slowdown (geometric mean over all rounds); rounds: mean rounds per session, "
            "unchanged / slowed; each cell: sessions with a regression verdict (+ those "
            "inconclusive: a failure under [speed] inconclusive = \"fail\", a warning "
            "under \"warn\")\n"
            + tabulate(rows, headers=["case", "sd log(U2/U1)", "S/U2", "rounds",
                                      "false alarms (disjoint)", "detections (disjoint)",
                                      "false alarms (random)", "detections (random)"],
                       disable_numparse=True)
            + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", choices=["interleaved", "runs"], default="interleaved")
    parser.add_argument("--suite", default="suites/smoke.toml")
    parser.add_argument("--slowdown", type=float, default=0.10)
    parser.add_argument("--policy", help="a gate policy file (default: bench gate's defaults)")
    parser.add_argument("--out", help="also write the report here")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved: rounds in all")
    parser.add_argument("--session-rounds", type=int, default=None,
                        help="interleaved: rounds per gated session at least (bench ab "
                             "--rounds; default as bench ab under the policy)")
    parser.add_argument("--max-rounds", type=int, default=None,
                        help="interleaved: at most (bench ab --max-rounds)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="interleaved: stop the chain after this many seconds")
    parser.add_argument("--target-half-width", type=float, default=DEFAULT_TARGET_HALF_WIDTH,
                        help="interleaved: bench ab --target-half-width")
    parser.add_argument("--resamples", type=int, default=1000,
                        help="interleaved: random sessions drawn from the rounds")
    parser.add_argument("--keep", help="interleaved: directory for the raw records")
    parser.add_argument("--from-dir", help="interleaved: re-evaluate kept records, no run")
    parser.add_argument("--unchanged", type=int, default=6, help="runs: unchanged runs")
    parser.add_argument("--slowed", type=int, default=4, help="runs: slowed runs")
    parser.add_argument("--processes", type=int, default=1,
                        help="runs: worker processes pooled per case (budget.processes)")
    args = parser.parse_args()
    policy = load_policy(args.policy) if args.policy else Policy()
    text = main_interleaved(args, policy) if args.design == "interleaved" else \
        main_runs(args, policy)
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text + "\n")
    return 0


def main_runs(args: argparse.Namespace, policy: Policy) -> str:
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
    return text


if __name__ == "__main__":
    raise SystemExit(main())
