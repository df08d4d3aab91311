"""Read older result files: each migration turns version N's JSON into version N+1's.

A file is migrated step by step, in memory, up to ``SCHEMA_VERSION``; the file on disk is
never rewritten by a reader. Every change of the record bumps the version and adds its
step here (as pyperf reads its older JSON files).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # Version 2 added statuses (diverged, contended) and an optional
    # CaseResult.interference; every version-1 record is a valid version-2 record.
    return {**data, "schema_version": 2}


def _label_of(case_id: object) -> str | None:
    head, _, _ = str(case_id).partition("[")  # workload/phase[:label]
    _, colon, label = head.partition(":")
    return label if colon and label else None


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    # Version 3 records each case's benchmark label, read here once from the case id.
    cases = data.get("cases")
    if isinstance(cases, list):
        cases = [{**c, "label": _label_of(c.get("case_id"))} if isinstance(c, dict) else c
                 for c in cases]
    return {**data, "cases": cases, "schema_version": 3}


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3}


def migrate(data: dict[str, Any], version: int, target: int) -> dict[str, Any]:
    while version < target:
        data = MIGRATIONS[version](data)
        version += 1
    return data
