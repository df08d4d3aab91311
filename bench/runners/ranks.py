"""A case trained across ranks on several nodes, under ``torchrun``:

    torchrun --nnodes 2 --node-rank K --nproc-per-node P --rdzv-backend c10d \\
        --rdzv-endpoint HOST:PORT -m bench.runners.ranks --suite SUITE.toml \\
        --case CASE_ID --out OUT.json

Every rank runs the same rank code as a case launched on one machine
(bench.modes.ranks); rank 0 appends the case's record to the result file OUT.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from bench.measurement.fingerprint import fingerprint
from bench.modes.ranks import assemble, rank_main, threads_per_rank
from bench.results.schema import CaseResult, RunInfo, RunRecord
from bench.results.store import ResultStore, exclusive_output
from bench.spec import load_suite
from bench.spec.expand import expand_suite
from bench.spec.model import is_distributed


def main(argv: list[str]) -> int:
    """Under torchrun (several nodes): run this rank of one case of a suite; rank 0
    appends the case's record to the result file (created if missing, resumable)."""
    parser = argparse.ArgumentParser(prog="python -m bench.runners.ranks")
    parser.add_argument("--suite", required=True)
    parser.add_argument("--case", required=True, help="the case id (bench list SUITE)")
    parser.add_argument("--out", required=True, help="result file rank 0 appends the case to")
    args = parser.parse_args(argv)
    suite = load_suite(args.suite)
    cases = {c.case_id: c for c in expand_suite(suite)}
    if args.case not in cases or not is_distributed(cases[args.case]):
        raise SystemExit(f"{args.suite}: no case {args.case!r} with parallel ddp or fsdp2 "
                         "(bench list shows the case ids)")
    case = cases[args.case]
    started = time.perf_counter()
    runs = rank_main(case.to_dict())
    if runs is None:
        return 0
    result = CaseResult.for_case(case, "ok")
    result.worker = {"pid": os.getpid(), "python": sys.version.split()[0],
                     "launcher": "torchrun (c10d rendezvous; its nodes and ranks as launched)",
                     "mode": "across_ranks"}
    nnodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))  # torchrun: the nodes that joined
    assemble(case, runs, result, nnodes=nnodes,
             threads=threads_per_rank(case, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    result.duration_s = time.perf_counter() - started
    result.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out = Path(args.out)
    with exclusive_output(out):
        store = ResultStore.open(out) if out.exists() else ResultStore.create(
            out, RunRecord(run=RunInfo.starting(suite), fingerprint=fingerprint(suite.path)))
        store.append(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
