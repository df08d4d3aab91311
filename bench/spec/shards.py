"""Which cases of a suite one shard of a fanned-out sweep runs (``bench run --shard K/N``).

A case belongs to shard ``sha256(case id) mod N``: the same on every machine and in every
Python, independent of file order and of the other cases, so a shard of a job array can be
rerun (``--resume``) or moved to another node and still hold the same cases.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from bench.errors import BenchInputError

# Where a scheduler says which task of an array this is: SLURM job arrays, then Kubernetes
# Indexed Jobs (whose completion count is not in the pod's environment: N must be given).
SLURM_INDEX, SLURM_COUNT = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"
SLURM_MIN = "SLURM_ARRAY_TASK_MIN"
KUBERNETES_INDEX = "JOB_COMPLETION_INDEX"


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, case_id: str) -> bool:
        return shard_of(case_id, self.count) == self.index

    def to_dict(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


def shard_of(case_id: str, count: int) -> int:
    digest = hashlib.sha256(case_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def _integer(text: str, source: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise BenchInputError(source, f"{text!r} is not an integer",
                              valid="K/N with 0 <= K < N, e.g. 0/4") from None


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """``K/N`` from the command line; ``auto`` (or ``K/N`` with a part left out: ``/4``,
    ``3/``) takes the missing parts from the scheduler's environment. None: not sharded."""
    if text is None:
        return None
    env = os.environ if environ is None else environ
    index_text, _, count_text = (text.partition("/") if text != "auto" else ("", "", ""))
    if not index_text:
        if SLURM_INDEX in env:
            # Arrays may start anywhere (--array=1-8): shards count from the array's minimum.
            index_text = str(int(env[SLURM_INDEX]) - int(env.get(SLURM_MIN, "0")))
        elif KUBERNETES_INDEX in env:
            index_text = env[KUBERNETES_INDEX]
        else:
            raise BenchInputError("--shard", f"{text!r} leaves out the shard index and neither "
                                  f"{SLURM_INDEX} nor {KUBERNETES_INDEX} is set",
                                  valid="K/N with 0 <= K < N")
    if not count_text:
        if SLURM_COUNT not in env:
            raise BenchInputError("--shard", f"{text!r} leaves out the shard count and "
                                  f"{SLURM_COUNT} is not set (a Kubernetes Indexed Job "
                                  "must give it: --shard /N)", valid="K/N with 0 <= K < N")
        count_text = env[SLURM_COUNT]
    index, count = _integer(index_text, "--shard"), _integer(count_text, "--shard")
    if count < 1 or not 0 <= index < count:
        raise BenchInputError("--shard", f"{index}/{count} is not a shard of a sweep",
                              valid="K/N with N >= 1 and 0 <= K < N")
    return Shard(index, count)
