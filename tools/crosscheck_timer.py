"""Cross-check the suite's timing against torch.utils.benchmark.

For digits_cnn inference at several batch sizes, times the same trained model on the
same input two ways, each in --processes independent processes, interleaved (a process
is the unit that varies: allocation, thread placement, neighbours on a shared host):

- the suite: the engine's worker, as `bench run` does (budget.processes pooled);
- the reference: torch.utils.benchmark.Timer.blocked_autorange on
  `with torch.inference_mode(): model(x)` in a fresh process, a timer the engine does
  not use; the median over processes is taken.

Prints both, each process's figure, and the median over pairs of suite / reference (each
suite process against the reference process run just before it); exits 1 beyond
--tolerance.

    python tools/crosscheck_timer.py [--batch-sizes 1 32 256] [--device cpu] [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch
from tabulate import tabulate

from bench.runners.isolation import run_isolated
from bench.runners.merge import merge_process_results
from bench.spec.model import Budget, CaseSpec
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import RunContext


def _case(batch: int, device: str, processes: int = 1) -> CaseSpec:
    workload = get_workload("digits_cnn")
    params = {k: s.default for k, s in workload.params().items()}
    budget = Budget(max_time_s=3.0, target_rel_ci=0.01, min_trials=10, max_trials=40,
                    processes=processes)
    axes = {"device": device, "precision": "fp32", "batch_size": batch}
    return CaseSpec("digits_cnn", "infer", axes, params, budget)


def reference_worker(batch: int, device: str, min_run_time: float) -> None:
    import torch.utils.benchmark as tub

    case = _case(batch, device, 1)
    phase = get_workload("digits_cnn").prepare(case, RunContext(device, get_precision("fp32")))
    timer = tub.Timer(stmt="with torch.inference_mode(): model(x)",
                      globals={"model": phase.model, "x": phase.inputs[0], "torch": torch},
                      num_threads=torch.get_num_threads())
    median = timer.blocked_autorange(min_run_time=min_run_time).median
    print(json.dumps({"median_s": median, "threads": torch.get_num_threads()}))


def reference(batch: int, device: str, min_run_time: float) -> float:
    out = subprocess.run([sys.executable, __file__, "--reference-worker", str(batch),
                          "--device", device, "--min-run-time", str(min_run_time)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, default=5,
                        help="interleaved (reference, suite) process pairs per batch size")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--min-run-time", type=float, default=2.0,
                        help="seconds of blocked_autorange per reference process")
    parser.add_argument("--reference-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_worker:
        reference_worker(args.reference_worker, args.device, args.min_run_time)
        return 0

    rows, worst = [], 0.0
    for batch in args.batch_sizes:
        case = _case(batch, args.device, 1)
        # Interleave the two sides process by process, so slow drift of a shared machine
        # hits both alike; the suite's processes are pooled as budget.processes would.
        refs, runs = [], []
        for _ in range(args.processes):
            refs.append(reference(batch, args.device, args.min_run_time))
            runs.append(run_isolated(case))
        result = merge_process_results(runs)
        if result.status != "ok":
            print(f"{case.case_id}: {result.status}: {result.reason}", file=sys.stderr)
            return 1
        suite_s, reference_s = result.timing.median_s, statistics.median(refs)
        per_process = [r.timing.median_s for r in runs]
        # Each suite process against the reference process run just before it: drift
        # of the machine common to the pair cancels in the ratio.
        paired = sorted(s / r for s, r in zip(per_process, refs, strict=True))
        ratio = statistics.median(paired)
        worst = max(worst, abs(ratio - 1))
        rows.append([case.case_id, f"{suite_s * 1e3:.4f}",
                     " ".join(f"{m * 1e3:.3f}" for m in per_process),
                     f"{reference_s * 1e3:.4f}", " ".join(f"{r * 1e3:.3f}" for r in refs),
                     f"{ratio:.3f}", f"{paired[0]:.2f}-{paired[-1]:.2f}",
                     result.timing.timer])
    print(tabulate(rows, headers=["case", "suite ms", "suite per process",
                                  "torch.utils.benchmark ms", "reference per process",
                                  "paired ratio (median)", "range", "suite timer"]))
    print(f"threads: {torch.get_num_threads()}; {args.processes} process pairs; "
          f"worst disagreement {worst:.1%} (tolerance {args.tolerance:.0%})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
