"""Cross-check the generate phase's TTFT and TPOT against a hand-written loop.

Times the same model, prompt and generation two ways, each in --processes independent
processes, interleaved pair by pair (a process is the unit that varies):

- the suite: the engine's worker for a smollm2 generate case, as `bench run` runs it;
- the reference: a loop written out here, in a fresh process, without the suite's code: it
  loads the GGUF file with transformers itself, builds the same prompt (the suite's shipped
  text, tokenized, its first --input-tokens tokens per sequence), and calls
  `model.generate(..., max_new_tokens = min_new_tokens = N, do_sample=False)` with a
  streamer whose `put` notes `time.perf_counter()` (after a `torch.cuda.synchronize()` on
  CUDA): two warm-up calls, then --calls timed calls; TTFT = first token - call start,
  TPOT = (last - first token) / (N - 1), each the median over calls.

Prints each side's per-process figures and, for TTFT and TPOT, the median over pairs of
suite / reference (each suite process against the reference process run just before it)
with the pairs' range; exits 1 beyond --tolerance.

    python tools/crosscheck_generation.py [--batch-size 1] [--input-tokens 128]
        [--output-tokens 64] [--precision fp32|bf16_cast] [--processes 5] [--calls 8]
        [--device cpu|cuda] [--tolerance 0.03] [--workers fork|spawn]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from tabulate import tabulate

from bench.launch.launcher import LocalLauncher
from bench.measurement.allocator import worker_env
from bench.spec.model import Budget, CaseSpec
from bench.workloads import get_workload


def _case(args: argparse.Namespace) -> CaseSpec:
    workload = get_workload("smollm2")
    axes = {k: s.default for k, s in workload.phase_axes("generate").items()}
    axes.update(device=args.device, precision=args.precision, batch_size=args.batch_size,
                input_tokens=args.input_tokens, output_tokens=args.output_tokens)
    budget = Budget(min_trials=args.calls, max_trials=args.calls, max_time_s=600.0,
                    timeout_s=600.0)
    return CaseSpec("smollm2", "generate", axes, {}, budget)


class _Stamps:
    """A streamer noting when each step's tokens reach the host (the prompt's put first)."""

    def __init__(self, device: str) -> None:
        self.device, self.times = device, []

    def put(self, value: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def reference_worker(args: argparse.Namespace) -> None:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    from bench.workloads._generate import held_out_text
    from bench.workloads._llm import smollm2_file

    transformers.utils.logging.set_verbosity_error()
    path = smollm2_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    dtype = {"fp32": torch.float32, "bf16_cast": torch.bfloat16}[args.precision]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).to(dtype).to(args.device)
    ids = torch.tensor(tokenizer(held_out_text())["input_ids"])
    stride = ids.numel() // args.batch_size
    prompt = torch.stack([ids[i * stride:i * stride + args.input_tokens]
                          for i in range(args.batch_size)]).to(args.device)
    n = args.output_tokens
    ttfts, tpots = [], []
    with torch.inference_mode():
        for call in range(2 + args.calls):
            stamps = _Stamps(args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           streamer=stamps, pad_token_id=tokenizer.eos_token_id,
                           disable_compile=True)
            tokens = stamps.times[1:]  # the first put is the prompt
            if call >= 2:
                ttfts.append(tokens[0] - start)
                tpots.append((tokens[-1] - tokens[0]) / (n - 1))
    print(json.dumps({"ttft_s": statistics.median(ttfts), "tpot_s": statistics.median(tpots),
                      "threads": torch.get_num_threads()}))


def reference(args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--reference-worker"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("reference_worker",)]
    out = subprocess.run(command, capture_output=True, text=True,
                         env=worker_env(_case(args).budget.allocator))
    if out.returncode != 0:
        raise SystemExit(f"reference process failed ({out.returncode}): "
                         f"{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16_cast"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--calls", type=int, default=8, help="timed calls per process")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--workers", choices=("spawn", "fork"), default="fork",
                        help="the suite's workers forked from a fork server (bench run's "
                             "default on CPU) or spawned")
    parser.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output_tokens < 2:
        parser.error("--output-tokens: at least 2, for a time per output token")
    if args.reference_worker:
        reference_worker(args)
        return 0
    case = _case(args)
    refs, runs = [], []
    with LocalLauncher(fork=args.workers == "fork") as launcher:
        for _ in range(args.processes):
            refs.append(reference(args))
            result = launcher.run_once(case)
            if not result.measured:
                print(f"{case.case_id}: {result.status}: {result.reason}", file=sys.stderr)
                return 1
            runs.append(result)
    rows, worst = [], 0.0
    for figure, suite_of in (("ttft_s", lambda r: r.generation.ttft_s["p50"]),
                             ("tpot_s", lambda r: r.generation.tpot_s["p50"])):
        suite = [suite_of(r) for r in runs]
        ref = [r[figure] for r in refs]
        paired = sorted(s / r for s, r in zip(suite, ref, strict=True))
        ratio = statistics.median(paired)
        worst = max(worst, abs(ratio - 1))
        rows.append([figure.removesuffix("_s").upper(), f"{statistics.median(suite) * 1e3:.2f}",
                     " ".join(f"{s * 1e3:.2f}" for s in suite),
                     f"{statistics.median(ref) * 1e3:.2f}",
                     " ".join(f"{r * 1e3:.2f}" for r in ref), f"{ratio:.3f}",
                     f"{paired[0]:.3f}-{paired[-1]:.3f}"])
    print(f"{case.case_id}")
    print(tabulate(rows, headers=["figure", "suite ms", "suite per process",
                                  "hand-written loop ms", "loop per process",
                                  "paired ratio (median)", "range"]))
    statuses = sorted({r.status for r in runs})
    print(f"threads: {torch.get_num_threads()}; {args.processes} process pairs, "
          f"{args.calls} timed calls each; suite statuses: {', '.join(statuses)}; worst "
          f"disagreement {worst:.1%} (tolerance {args.tolerance:.0%})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
