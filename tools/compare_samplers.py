"""Compare hyperparameter samplers the way kurobako does: several studies per sampler (one per
study seed), each study filled by several `bench tune` processes sharing one Optuna journal,
then `bench tune-report` over all of them (best values, best-so-far, pruning savings, and a
Mann-Whitney U test between samplers on the best values reached).

    python tools/compare_samplers.py suites/tune.toml --samplers tpe random --study-seeds 3 \
        --trials 20 --processes 2 --storage results/runs/tune-samplers.journal
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    parser.add_argument("--study-seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20, help="trials per study, in all")
    parser.add_argument("--processes", type=int, default=2,
                        help="bench tune processes per study")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--out-dir", help="the trials' result files (default: by the journal)")
    parser.add_argument("--pruner", default="median")
    parser.add_argument("--objective", default="samples_to_target")
    parser.add_argument("--seeds", default="1", help="training seeds per trial")
    args = parser.parse_args(argv)
    journal = Path(args.storage)
    out_dir = Path(args.out_dir or journal.parent / f"{journal.stem}-trials")
    out_dir.mkdir(parents=True, exist_ok=True)
    per_process = -(-args.trials // args.processes)
    for sampler in args.samplers:
        for seed in range(args.study_seeds):
            study = f"{sampler}-seed{seed}"
            started = time.perf_counter()
            procs = [subprocess.Popen(
                [sys.executable, "-m", "bench", "tune", args.suite, "--sampler", sampler,
                 "--seed", str(seed), "--trials", str(per_process), "--seeds", args.seeds,
                 "--pruner", args.pruner, "--objective", args.objective, "--study", study,
                 "--storage", args.storage, "--out", str(out_dir / f"{study}-p{i}.json"),
                 "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL)
                for i in range(args.processes)]
            codes = [p.wait() for p in procs]
            print(f"{study}: {args.processes} processes x {per_process} trials in "
                  f"{time.perf_counter() - started:.0f} s (exit codes {codes})", flush=True)
            if any(codes):
                return 1
    return subprocess.call([sys.executable, "-m", "bench", "tune-report", args.storage],
                           cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
