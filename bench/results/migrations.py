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


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}


def migrate(data: dict[str, Any], version: int, target: int) -> dict[str, Any]:
    while version < target:
        data = MIGRATIONS[version](data)
        version += 1
    return data
