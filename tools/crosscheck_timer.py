"""Cross-check the suite's timing against torch.utils.benchmark.

For fp32 eager inference of a workload at several batch sizes, times the same model on
the same input shape two ways, each in --processes independent processes, interleaved (a
process is the unit that varies: allocation, thread placement, neighbours on a shared
host):

- the suite: the engine's worker, as `bench run` does (budget.processes pooled);
- the reference: torch.utils.benchmark.Timer.blocked_autorange on a plain hand-written
  forward in a fresh process, a timer the engine does not use; the median over
  processes is taken. digits_cnn: `model(x)` on the suite's trained model. minilm: the
  transformers model called directly on tokenizer output, then mean pooling, written
  out in the statement without any of the suite's code.

Prints both, each process's figure, and the median over pairs of suite / reference (each
suite process against the reference process run just before it); exits 1 beyond
--tolerance.

    python tools/crosscheck_timer.py [--workload digits_cnn|minilm] [--batch-sizes 1 32 256]
        [--seq-len 128] [--device cpu] [--processes 5] [--allocator steady|system]
        [--workers spawn|fork]

Both sides run in the same host allocator state (--allocator, the suite's budget default
`steady`): with `system`, glibc's dynamic mmap threshold makes each process's speed
depend on what it allocated before timing, which is not what either side measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch
from tabulate import tabulate

from bench.measurement.allocator import POLICIES, worker_env
from bench.runners.fork_server import ForkServers
from bench.runners.isolation import run_isolated
from bench.runners.merge import merge_process_results
from bench.spec.model import Budget, CaseSpec
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import RunContext


def _case(workload_name: str, batch: int, device: str, seq_len: int,
          allocator: str = "steady") -> CaseSpec:
    workload = get_workload(workload_name)
    params = {k: s.default for k, s in workload.params().items()
              if s.phases is None or "infer" in s.phases}
    budget = Budget(max_time_s=3.0, target_rel_ci=0.01, min_trials=10, max_trials=40,
                    allocator=allocator)
    axes = {"device": device, "precision": "fp32", "batch_size": batch}
    if workload_name == "minilm":
        axes["seq_len"] = seq_len
    return CaseSpec(workload_name, "infer", axes, params, budget)


MINILM_STMT = """\
with torch.inference_mode():
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    embedding = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
"""


def _minilm_reference(batch: int, device: str, seq_len: int) -> tuple[str, dict]:
    import itertools
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    from bench.workloads.minilm import eval_sentences, model_path

    path = str(model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, add_pooling_layer=False).eval().to(device)
    sentences = list(itertools.islice(itertools.cycle(eval_sentences()), batch))
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len,
                    return_tensors="pt").to(device)
    return MINILM_STMT, {"model": model, "input_ids": enc["input_ids"],
                         "attention_mask": enc["attention_mask"], "torch": torch}


def reference_worker(workload: str, batch: int, device: str, seq_len: int,
                     min_run_time: float) -> None:
    import torch.utils.benchmark as tub

    if workload == "minilm":
        stmt, env = _minilm_reference(batch, device, seq_len)
    else:
        case = _case(workload, batch, device, seq_len)
        phase = get_workload(workload).prepare(case, RunContext(device, get_precision("fp32")))
        stmt = "with torch.inference_mode(): model(x)"
        env = {"model": phase.teacher, "x": phase.inputs[0][0], "torch": torch}
    timer = tub.Timer(stmt=stmt, globals=env, num_threads=torch.get_num_threads())
    median = timer.blocked_autorange(min_run_time=min_run_time).median
    print(json.dumps({"median_s": median, "threads": torch.get_num_threads()}))


def reference(workload: str, batch: int, device: str, seq_len: int,
              min_run_time: float, allocator: str) -> float:
    # The same allocator state as the suite's worker (bench.measurement.allocator).
    out = subprocess.run([sys.executable, __file__, "--reference-worker", str(batch),
                          "--workload", workload, "--seq-len", str(seq_len),
                          "--device", device, "--min-run-time", str(min_run_time)],
                         capture_output=True, text=True, check=True,
                         env=worker_env(allocator))
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits_cnn", choices=["digits_cnn", "minilm"])
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="default: 1 32 256 (digits_cnn), 1 8 32 (minilm)")
    parser.add_argument("--seq-len", type=int, default=128, help="minilm tokens per sentence")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, default=5,
                        help="interleaved (reference, suite) process pairs per batch size")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--min-run-time", type=float, default=2.0,
                        help="seconds of blocked_autorange per reference process")
    parser.add_argument("--allocator", default="steady", choices=POLICIES,
                        help="host allocator state of both sides (bench.measurement.allocator)")
    parser.add_argument("--workers", choices=("spawn", "fork"), default="spawn",
                        help="the suite's workers spawned (bench run) or forked from a fork "
                             "server (bench ab's rounds on CPU)")
    parser.add_argument("--reference-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_worker:
        reference_worker(args.workload, args.reference_worker, args.device, args.seq_len,
                         args.min_run_time)
        return 0
    batch_sizes = args.batch_sizes or ([1, 8, 32] if args.workload == "minilm" else [1, 32, 256])

    with ForkServers() as servers:
        return _crosscheck(args, batch_sizes, servers if args.workers == "fork" else None)


def _crosscheck(args: argparse.Namespace, batch_sizes: list[int],
                servers: ForkServers | None) -> int:
    rows, worst = [], 0.0
    for batch in batch_sizes:
        case = _case(args.workload, batch, args.device, args.seq_len, args.allocator)
        # Interleave the two sides process by process, so slow drift of a shared machine
        # hits both alike; the suite's processes are pooled as budget.processes would.
        refs, runs = [], []
        for _ in range(args.processes):
            refs.append(reference(args.workload, batch, args.device, args.seq_len,
                                  args.min_run_time, args.allocator))
            runs.append(run_isolated(case, servers=servers))
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
    print(f"suite workers: {result.worker.get('started', args.workers)}")
    print(f"threads: {torch.get_num_threads()}; allocator: {args.allocator} "
          f"({result.details.get('allocator')}); {args.processes} process pairs; "
          f"worst disagreement {worst:.1%} (tolerance {args.tolerance:.0%})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
