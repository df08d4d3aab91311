"""Cross-check the suite's timing against torch.utils.benchmark.

For digits_cnn inference, runs each case through the engine's isolated worker (the
same path as `bench run`) and times the same trained model on the same input batch
with torch.utils.benchmark.Timer.blocked_autorange, a timer the engine does not use.
Prints both medians and their ratio; exits 1 if any differ by more than --tolerance.

    python tools/crosscheck_timer.py [--batch-sizes 1 32 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.utils.benchmark as tub
from tabulate import tabulate

from bench.runners.isolation import run_isolated
from bench.spec.model import Budget, CaseSpec
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import RunContext


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--min-run-time", type=float, default=3.0,
                        help="seconds for blocked_autorange")
    args = parser.parse_args()

    workload = get_workload("digits_cnn")
    params = {k: s.default for k, s in workload.params().items()}
    budget = Budget(max_time_s=5.0, target_rel_ci=0.01, min_trials=10, max_trials=40)
    rows, worst = [], 0.0
    for batch in args.batch_sizes:
        axes = {"device": args.device, "precision": "fp32", "batch_size": batch}
        case = CaseSpec("digits_cnn", "infer", axes, params, budget)
        phase = workload.prepare(case, RunContext(args.device, get_precision("fp32")))
        timer = tub.Timer(stmt="with torch.inference_mode(): model(x)",
                          globals={"model": phase.model, "x": phase.inputs[0], "torch": torch},
                          num_threads=torch.get_num_threads())
        # Reference before and after the suite's worker: a shared machine drifts over
        # minutes, and the before/after spread shows how much.
        before = timer.blocked_autorange(min_run_time=args.min_run_time).median
        result = run_isolated(case)
        after = timer.blocked_autorange(min_run_time=args.min_run_time).median
        if result.status != "ok":
            print(f"{case.case_id}: {result.status}: {result.reason}", file=sys.stderr)
            return 1
        suite_s, reference_s = result.timing.median_s, (before + after) / 2
        ratio = suite_s / reference_s
        worst = max(worst, abs(ratio - 1))
        rows.append([case.case_id, f"{suite_s * 1e3:.4f}", f"{reference_s * 1e3:.4f}",
                     f"{abs(after - before) / reference_s:.1%}", f"{ratio:.3f}",
                     result.timing.timer])
    print(tabulate(rows, headers=["case", "suite median ms", "torch.utils.benchmark ms",
                                  "reference drift", "ratio", "suite timer"]))
    print(f"threads: {torch.get_num_threads()}; worst disagreement {worst:.1%} "
          f"(tolerance {args.tolerance:.0%})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
