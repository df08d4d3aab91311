"""The run file on disk: created once, rewritten atomically after every finished case.

Each write goes to a temporary file in the same directory, is fsynced, then renamed
over the run file (``os.replace`` is atomic on POSIX). A sweep killed at any moment,
SIGKILL included, leaves either the previous or the new complete file: no finished
case is lost and no half-written JSON is ever read.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.errors import BenchInputError
from bench.results.schema import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    CaseResult,
    RunRecord,
    SchemaError,
    from_dict,
)


def json_safe(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(json_safe(data), handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_run(path: str | Path) -> RunRecord:
    """Read a run file; refuse foreign files and unknown schema versions (one line)."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchInputError(source, f"cannot read result file: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchInputError(source, f"not a JSON result file ({exc.msg} at line "
                              f"{exc.lineno})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise BenchInputError(source, f"not a bench run file (schema {found!r})", key="schema",
                              valid=SCHEMA_NAME)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise BenchInputError(source, f"unsupported schema version "
                              f"{data.get('schema_version')!r}", key="schema_version",
                              valid=[SCHEMA_VERSION])
    try:
        return from_dict(RunRecord, data)
    except SchemaError as exc:
        raise BenchInputError(source, f"corrupt result file: {exc}") from None


class ResultStore:
    """Owns one run file; ``append`` persists each finished case before returning."""

    def __init__(self, path: str | Path, record: RunRecord) -> None:
        self.path = Path(path)
        self.record = record

    @classmethod
    def create(cls, path: str | Path, record: RunRecord) -> ResultStore:
        store = cls(path, record)
        store.flush()
        return store

    @classmethod
    def open(cls, path: str | Path) -> ResultStore:
        return cls(path, load_run(path))

    def completed_ids(self) -> set[str]:
        return {case.case_id for case in self.record.cases}

    def append(self, case: CaseResult) -> None:
        self.record.cases = [c for c in self.record.cases if c.case_id != case.case_id]
        self.record.cases.append(case)
        self.flush()

    def flush(self) -> None:
        write_atomically(self.path, self.record.to_dict())
