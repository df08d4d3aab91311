"""Versioned result records and the store that appends them atomically."""

from bench.results.schema import SCHEMA_NAME, SCHEMA_VERSION, CaseResult, RunRecord
from bench.results.store import ResultStore, load_run

__all__ = ["SCHEMA_NAME", "SCHEMA_VERSION", "CaseResult", "ResultStore", "RunRecord", "load_run"]
