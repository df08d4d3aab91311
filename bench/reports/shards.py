"""Merge the shard files of a fanned-out sweep (``bench run --shard K/N``) into one run
(``bench merge``): the same suite and selection, comparable machines, no case twice, and
every missing shard or case named."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field

from bench.errors import BenchInputError
from bench.reports.compare import fingerprint_differences
from bench.results.schema import MergedShard, RunInfo, RunRecord


@dataclass
class MergedRun:
    record: RunRecord
    missing_shards: list[int] = field(default_factory=list)
    # Case ids a present shard was given but has no record of (a cut-off shard: --resume
    # it), then those of missing shards where the suite file could tell them.
    missing_cases: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing_shards and not self.missing_cases

    def problems(self) -> list[str]:
        count = self.record.run.shards[0].count if self.record.run.shards else 0
        lines = [f"shard {i}/{count} is missing" for i in self.missing_shards]
        if self.missing_cases:
            shown = ", ".join(self.missing_cases[:10])
            more = len(self.missing_cases) - 10
            lines.append(f"{len(self.missing_cases)} cases have no record: {shown}"
                         + (f" (and {more} more)" if more > 0 else ""))
        return lines


def _same(sources: list[str], records: list[RunRecord], what: str, key: str,
          value) -> None:  # noqa: ANN001 - a getter of RunInfo
    first = value(records[0].run)
    for source, record in zip(sources[1:], records[1:], strict=True):
        if value(record.run) != first:
            raise BenchInputError(source, f"{what} {value(record.run)!r} differs from "
                                  f"{sources[0]}'s {first!r}; shards of one sweep share it",
                                  key=key)


def merge_shards(sources: list[str], records: list[RunRecord], *,
                 allow_different_machines: bool = False,
                 expected_ids: list[str] | None = None) -> MergedRun:
    """One run from shard files (each ``sources[i]`` read into ``records[i]``).
    ``expected_ids``: the suite's case ids, in suite order, where the suite file is at
    hand: they order the merged cases and name the cases of missing shards."""
    if not records:
        raise BenchInputError("bench merge", "no shard files given")
    for source, record in zip(sources, records, strict=True):
        if record.run.shard is None:
            raise BenchInputError(source, "is not a shard file (run with bench run --shard "
                                  "K/N)", key="run.shard")
    _same(sources, records, "suite hash", "run.suite_sha256", lambda r: r.suite_sha256)
    _same(sources, records, "selection", "run.selection", lambda r: r.selection)
    _same(sources, records, "shard count", "run.shard.count", lambda r: r.shard.count)
    seen: dict[int, str] = {}
    owner: dict[str, str] = {}
    for source, record in zip(sources, records, strict=True):
        shard = record.run.shard
        if shard.index in seen:
            raise BenchInputError(source, f"holds shard {shard.index}/{shard.count}, as "
                                  f"{seen[shard.index]} does", key="run.shard.index")
        seen[shard.index] = source
        given = set(shard.case_ids)
        for case in record.cases:
            if case.case_id in owner:
                raise BenchInputError(source, f"case {case.case_id} is also in "
                                      f"{owner[case.case_id]}", key="cases")
            if case.case_id not in given:
                raise BenchInputError(source, f"case {case.case_id} is not one of shard "
                                      f"{shard.index}/{shard.count}'s cases", key="cases")
            owner[case.case_id] = source
        if not allow_different_machines and (
                diffs := fingerprint_differences(records[0], record)):
            raise BenchInputError(source, f"measured on a different machine or stack than "
                                  f"{sources[0]} ({'; '.join(diffs)}); pass "
                                  "--allow-different-machines to merge anyway",
                                  key="fingerprint")
    count = records[0].run.shard.count
    order = sorted(range(len(records)), key=lambda i: records[i].run.shard.index)
    cases = [case for i in order for case in records[i].cases]
    given_ids = [cid for i in order for cid in records[i].run.shard.case_ids]
    missing_cases = [cid for cid in given_ids if cid not in owner]
    if expected_ids is not None:
        position = {cid: n for n, cid in enumerate(expected_ids)}
        cases.sort(key=lambda c: position.get(c.case_id, len(position)))
        missing_cases += [cid for cid in expected_ids
                          if cid not in owner and cid not in set(given_ids)]
    first = records[order[0]]
    info = RunInfo(
        run_id=uuid.uuid4().hex[:12], suite_name=first.run.suite_name,
        suite_path=first.run.suite_path, suite_sha256=first.run.suite_sha256,
        started_at=min(r.run.started_at for r in records), command=list(sys.argv),
        selection=first.run.selection,
        shards=[MergedShard(index=records[i].run.shard.index, count=count,
                            run_id=records[i].run.run_id, source=sources[i],
                            started_at=records[i].run.started_at,
                            fingerprint=records[i].fingerprint) for i in order])
    record = RunRecord(run=info, fingerprint=first.fingerprint, cases=cases)
    return MergedRun(record, missing_shards=sorted(set(range(count)) - set(seen)),
                     missing_cases=missing_cases)
