"""Do forked workers measure what spawned workers measure? An interleaved A/B of the same
code, one side's workers spawned (a fresh interpreter each), the other's forked from a
fork server (bench.launch.fork_server): every case's paired ratio with its 95% CI, and
each side's wall time per worker.

    python tools/fork_vs_spawn.py [--suite suites/smoke.toml] [--rounds 8] [--out FILE]

A ratio whose CI excludes 1 by more than the run-to-run noise would mean the fork server
changes the figure it is meant only to make cheaper.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from tabulate import tabulate

from bench.launch.isolation import WorkerCode
from bench.orchestrate.interleave import Side, run_interleaved
from bench.orchestrate.rounds import Stopping
from bench.reports.compare import compare_runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/smoke.toml")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", help="also append the report here")
    args = parser.parse_args()
    here = WorkerCode.this_checkout()
    started = time.perf_counter()
    out_dir = tempfile.mkdtemp(prefix="fork-vs-spawn-")
    spawned, forked = run_interleaved(
        args.suite, [Side("spawned", here, fork=False), Side("forked", here, fork=True)],
        Stopping(args.rounds, args.rounds), out_dir,
        progress=lambda text: print(text, file=sys.stderr, flush=True))
    rows = []
    for c in compare_runs(spawned, forked):
        if c.speed is None:
            rows.append([c.case_id, "-", "-", "-", "-"])
            continue
        low, high = c.speed.time.ci_low, c.speed.time.ci_high
        walls = [rec.case(c.case_id).duration_s / c.speed.time.pairs
                 for rec in (spawned, forked)]
        rows.append([c.case_id, f"{c.speed.time.ratio:.3f}", f"{low:.3f}–{high:.3f}",
                     f"{c.speed.time.pairs}", f"{walls[0]:.1f} / {walls[1]:.1f}"])
    text = (f"suite {args.suite}: {args.rounds} interleaved rounds, one spawned and one "
            f"forked worker per round per case (same code, same machine); "
            f"{time.perf_counter() - started:.0f} s; records in {out_dir}\n"
            + tabulate(rows, headers=["case", "step time forked/spawned", "95% CI (paired t)",
                                      "rounds", "wall s per worker (spawned / forked)"],
                       disable_numparse=True) + "\n")
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
