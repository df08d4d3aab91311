"""Cross-check the suite's timing against a timer the engine does not use.

Times the same model and step two ways, each in --processes independent processes,
interleaved (a process is the unit that varies: allocation, thread placement, neighbours
on a shared host):

- the suite: the engine's worker, as `bench run` does (budget.processes pooled);
- the reference, a hand-written statement in a fresh process, without the suite's timing
  code, timed by --reference:
  - `tub`: torch.utils.benchmark.Timer.blocked_autorange (the CPU default);
  - `events`: a hand-written loop, one torch.cuda.Event pair around each block of steps
    after one synchronize (on CPU, time.perf_counter around each block; the CUDA default);
  the median over blocks, then over processes, is taken.
  digits_cnn (infer): `model(x)` on the suite's trained model. minilm (infer): the
  transformers model called directly on tokenizer output, then mean pooling. gpt (train):
  a nanoGPT-style step written out here (random windows, forward under autocast,
  cross-entropy, backward, AdamW, zero_grad) on the same GPT module and corpus.

Prints both, each process's figure, and the median over pairs of suite / reference (each
suite process against the reference process run just before it) with the pairs' range;
exits 1 beyond --tolerance.

    python tools/crosscheck_timer.py [--workload digits_cnn|minilm|gpt] [--batch-sizes 1 32 256]
        [--seq-len 128] [--device cpu|cuda] [--precision fp32|tf32|bf16] [--backend eager|compile]
        [--model tiny|small|gpt2-124m] [--reference tub|events] [--processes 5]
        [--allocator steady|system] [--workers spawn|fork]

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

from bench.launch.launcher import LocalLauncher
from bench.launch.merge import merge_process_results
from bench.measurement.allocator import worker_env
from bench.spec.model import ALLOCATOR_POLICIES, Budget, CaseSpec
from bench.variants.precision import get_precision
from bench.workloads import get_workload
from bench.workloads.base import RunContext


def _case(workload_name: str, batch: int, device: str, seq_len: int,
          allocator: str = "steady", precision: str = "fp32", backend: str = "eager",
          model: str = "tiny", threads: int = 0) -> CaseSpec:
    workload = get_workload(workload_name)
    phase = "train" if workload_name == "gpt" else "infer"
    params = {k: s.default for k, s in workload.params().items()
              if s.phases is None or phase in s.phases}
    budget = Budget(max_time_s=3.0, target_rel_ci=0.01, min_trials=10, max_trials=40,
                    allocator=allocator)
    axes = {"device": device, "precision": precision, "batch_size": batch}
    if threads:
        axes["threads"] = threads
    if workload_name == "minilm":
        axes["seq_len"] = seq_len
    if workload_name == "gpt":
        axes.update(backend=backend, model=model, fused_optimizer=device == "cuda", accum_steps=1)
        params.update(GPT_PARAMS)
    return CaseSpec(workload_name, phase, axes, params, budget)


# The suite's gpt case trains this long after timing (for val_bpb): kept short here.
GPT_PARAMS = {"train_steps": 2, "corpus_mib": 1.0, "lr": 6e-4}

REFERENCE_NAMES = {"tub": "torch.utils.benchmark", "events": "event loop"}

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


GPT_TRAIN_STMT = """\
idx = torch.randint(0, len(x), (batch,), device=device)
with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
    logits = model(x[idx])
loss = F.cross_entropy(logits.float().flatten(0, 1), y[idx].flatten())
loss.backward()
optimizer.step()
optimizer.zero_grad(set_to_none=True)
"""


def _gpt_reference(batch: int, device: str, precision: str, backend: str,
                   model_name: str) -> tuple[str, dict]:
    from torch.nn import functional as F

    from bench.workloads.gpt import TRAIN_WINDOWS, load_corpus, windows
    from bench.workloads.gpt_model import CONFIGS, GPT

    cfg = CONFIGS[model_name]
    train = load_corpus(GPT_PARAMS["corpus_mib"])[0]
    x, y = (z.to(device) for z in windows(train, TRAIN_WINDOWS, cfg.block_size, seed=1))
    torch.manual_seed(0)
    model = GPT(cfg).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": rest, "weight_decay": 0.0}],
                                  lr=GPT_PARAMS["lr"], betas=(0.9, 0.95),
                                  fused=device == "cuda")
    if device == "cuda":  # TF32 only where the precision asks for it, as the suite sets
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    runnable = torch.compile(model) if backend == "compile" else model
    return GPT_TRAIN_STMT, {"model": runnable, "optimizer": optimizer, "x": x, "y": y,
                            "batch": batch, "device": device, "dtype": dtype,
                            "torch": torch, "F": F}


def _reference_statement(workload: str, batch: int, device: str, seq_len: int,
                         precision: str, backend: str, model: str) -> tuple[str, dict]:
    if workload == "gpt":
        return _gpt_reference(batch, device, precision, backend, model)
    if workload == "minilm":
        return _minilm_reference(batch, device, seq_len)
    case = _case(workload, batch, device, seq_len)
    phase = get_workload(workload).prepare(case, RunContext(device, get_precision("fp32")))
    return "with torch.inference_mode(): model(x)", {"model": phase.teacher,
                                                    "x": phase.inputs[0][0], "torch": torch}


def _as_function(stmt: str, env: dict) -> object:
    """The statement as a function of no arguments over ``env`` (the same code tub runs)."""
    body = "".join(f"    {line}\n" for line in stmt.splitlines())
    exec(f"def _step():\n{body}", env)  # noqa: S102 - our own statement, written above
    return env["_step"]


def event_loop_median(step, device: str, min_run_time: float, block_s: float = 0.2,
                      warmup_s: float = 1.0) -> float:
    """A hand-written timing loop: steps until ``warmup_s`` has passed (compilation, lazy
    init), then blocks of n steps (n sized to ``block_s``), each block between one CUDA
    event pair after a synchronize (CPU: perf_counter), until ``min_run_time``; the median
    over blocks of seconds per step."""
    import time

    def block(n: int) -> float:
        if device != "cuda":
            started = time.perf_counter()
            for _ in range(n):
                step()
            return time.perf_counter() - started
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3

    started = time.perf_counter()
    per_step = block(1)
    while time.perf_counter() - started < warmup_s:
        per_step = block(1)
    n = max(1, round(block_s / max(per_step, 1e-9)))
    means, started = [], time.perf_counter()
    while len(means) < 5 or time.perf_counter() - started < min_run_time:
        means.append(block(n) / n)
    return statistics.median(means)


def reference_worker(workload: str, batch: int, device: str, seq_len: int,
                     min_run_time: float, timer_name: str, precision: str, backend: str,
                     model: str, threads: int = 0) -> None:
    if threads:
        torch.set_num_threads(threads)
    stmt, env = _reference_statement(workload, batch, device, seq_len, precision, backend,
                                     model)
    if timer_name == "events":
        median = event_loop_median(_as_function(stmt, env), device, min_run_time)
    else:
        import torch.utils.benchmark as tub

        timer = tub.Timer(stmt=stmt, globals=env, num_threads=torch.get_num_threads())
        median = timer.blocked_autorange(min_run_time=min_run_time).median
    print(json.dumps({"median_s": median, "threads": torch.get_num_threads()}))


def reference(args: argparse.Namespace, batch: int) -> float:
    # The same allocator state as the suite's worker (bench.measurement.allocator).
    out = subprocess.run([sys.executable, __file__, "--reference-worker", str(batch),
                          "--workload", args.workload, "--seq-len", str(args.seq_len),
                          "--device", args.device, "--min-run-time", str(args.min_run_time),
                          "--reference", args.reference, "--precision", args.precision,
                          "--backend", args.backend, "--model", args.model,
                          "--threads", str(args.threads)],
                         capture_output=True, text=True, env=worker_env(args.allocator))
    if out.returncode != 0:
        raise SystemExit(f"reference process failed ({out.returncode}): "
                         f"{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits_cnn",
                        choices=["digits_cnn", "minilm", "gpt"])
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="default: 1 32 256 (digits_cnn), 1 8 32 (minilm), 16 (gpt)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                        help="gpt only (inference cross-checks run fp32)")
    parser.add_argument("--backend", default="eager", choices=["eager", "compile"],
                        help="gpt only: both sides eager or both torch.compile")
    parser.add_argument("--model", default="tiny", help="gpt config (bench.workloads.gpt_model)")
    parser.add_argument("--reference", choices=["tub", "events"],
                        help="the reference timer: torch.utils.benchmark, or a hand-written "
                             "CUDA-event block loop (default: events on cuda and for gpt, "
                             "else tub)")
    parser.add_argument("--seq-len", type=int, default=128, help="minilm tokens per sentence")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, default=5,
                        help="interleaved (reference, suite) process pairs per batch size")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--min-run-time", type=float, default=2.0,
                        help="seconds of blocked_autorange per reference process")
    parser.add_argument("--allocator", default="steady", choices=ALLOCATOR_POLICIES,
                        help="host allocator state of both sides (bench.measurement.allocator)")
    parser.add_argument("--workers", choices=("spawn", "fork"), default="spawn",
                        help="the suite's workers spawned (bench run) or forked from a fork "
                             "server (bench ab's rounds on CPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads on both sides (0: torch's default). On "
                             "a shared VM a 2-thread process can run in a slow mode for "
                             "tens of seconds (issue 27); one thread has shown none")
    parser.add_argument("--reference-worker", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.reference = args.reference or (
        "events" if args.device == "cuda" or args.workload == "gpt" else "tub")
    if args.workload == "gpt" and args.reference == "tub":
        parser.error("--workload gpt: a training step mutates its model; use --reference events")
    if args.workload != "gpt" and (args.precision, args.backend) != ("fp32", "eager"):
        parser.error("--precision, --backend: inference cross-checks run fp32 eager")
    if args.reference_worker:
        reference_worker(args.workload, args.reference_worker, args.device, args.seq_len,
                         args.min_run_time, args.reference, args.precision, args.backend,
                         args.model, args.threads)
        return 0
    batch_sizes = args.batch_sizes or {"minilm": [1, 8, 32], "gpt": [16]}.get(
        args.workload, [1, 32, 256])

    with LocalLauncher(fork=args.workers == "fork") as launcher:
        return _crosscheck(args, batch_sizes, launcher)


def _crosscheck(args: argparse.Namespace, batch_sizes: list[int],
                launcher: LocalLauncher) -> int:
    rows, worst = [], 0.0
    for batch in batch_sizes:
        case = _case(args.workload, batch, args.device, args.seq_len, args.allocator,
                     args.precision, args.backend, args.model, args.threads)
        # Interleave the two sides process by process, so slow drift of a shared machine
        # hits both alike; the suite's processes are pooled as budget.processes would.
        refs, runs = [], []
        for _ in range(args.processes):
            refs.append(reference(args, batch))
            runs.append(launcher.run_once(case))
        result = merge_process_results(runs)
        if result.status == "contended":  # measured while the host took CPU: kept, said
            print(f"{case.case_id}: contended: {result.reason}", file=sys.stderr)
        elif result.status != "ok":
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
    name = REFERENCE_NAMES[args.reference]
    print(tabulate(rows, headers=["case", "suite ms", "suite per process",
                                  f"{name} ms", "reference per process",
                                  "paired ratio (median)", "range", "suite timer"]))
    print(f"suite workers: {result.worker.get('started', args.workers)}")
    print(f"threads: {args.threads or torch.get_num_threads()}; allocator: {args.allocator} "
          f"({result.details.get('allocator')}); {args.processes} process pairs; "
          f"worst disagreement {worst:.1%} (tolerance {args.tolerance:.0%})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
