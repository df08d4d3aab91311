"""The run file on disk: created once, rewritten atomically after every finished case.

Each write goes to a temporary file in the same directory, is fsynced, then renamed
over the run file (``os.replace`` is atomic on POSIX). A sweep killed at any moment,
SIGKILL included, leaves either the previous or the new complete file: no finished
case is lost and no half-written JSON is ever read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import BenchInputError
from bench.files import read_bounded_text, write_text_atomically
from bench.results.migrations import MIGRATIONS, migrate
from bench.results.schema import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    CaseResult,
    RunRecord,
    check_record,
)
from bench.typed import SchemaError, from_dict, plain_numbers
from bench.units import MIB

# Result files are a few MiB at most; a larger "result file" (or /dev/zero) is refused
# before it is read whole.
MAX_RESULT_BYTES = 256 * MIB


def json_safe(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if plain_numbers(value) and math.isfinite(sum(value)):  # all finite: copied whole
            return list(value)
        return [json_safe(v) for v in value]
    return value


def record_text(data: dict[str, Any]) -> str:
    """A run file's text: its head indented for a reader, then each case on one line of
    its own. json's C encoder writes only unindented JSON: the indented pure-Python one
    took 0.4 s per rewrite of a 22-case file (each raw sample on a line of its own, 5.7
    MB), and the file is rewritten after every case."""
    data = json_safe(data)
    cases = data.get("cases")
    if not isinstance(cases, list) or not data or list(data)[-1] != "cases":
        return json.dumps(data, indent=1) + "\n"
    head = json.dumps({k: v for k, v in data.items() if k != "cases"}, indent=1)
    lines = ",\n".join(json.dumps(case) for case in cases)
    return f'{head.removesuffix("}").rstrip()},\n "cases": [\n{lines}\n ]\n}}\n'


def write_atomically(path: Path, data: dict[str, Any], option: str | None = None) -> None:
    write_text_atomically(path, record_text(data), option)


def load_run(path: str | Path) -> RunRecord:
    """Read a run file; refuse foreign, malformed and unknown-version files (one line)."""
    source = str(path)
    text = read_bounded_text(path, "result file", MAX_RESULT_BYTES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchInputError(source, f"not a JSON result file ({exc.msg} at line "
                              f"{exc.lineno})") from None
    except RecursionError:
        raise BenchInputError(source, "not a result file (JSON nested too deeply)") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise BenchInputError(source, f"not a bench run file (schema {str(found)[:40]!r})",
                              key="schema", valid=SCHEMA_NAME)
    version = data.get("schema_version")
    known = [*MIGRATIONS, SCHEMA_VERSION]
    if type(version) is not int or version not in known:
        raise BenchInputError(source, f"unsupported schema version {str(version)[:20]}",
                              key="schema_version", valid=known)
    try:
        record = from_dict(RunRecord, migrate(data, version, SCHEMA_VERSION))
        check_record(record)
    except SchemaError as exc:
        raise BenchInputError(source, f"corrupt result file: {exc}") from None
    except RecursionError:
        raise BenchInputError(source, "corrupt result file: nested too deeply") from None
    return record


class OutputLocked(BenchInputError):
    pass


@contextlib.contextmanager
def exclusive_output(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``.NAME.lock`` beside it) while a
    run writes it; a second writer is refused at once with one line. The kernel drops
    the lock when the holder dies, however it dies."""
    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise BenchInputError(str(path), f"cannot write here: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise OutputLocked(str(path), "another bench process is writing this result "
                               f"file{f' (pid {holder})' if holder else ''}; wait for it or "
                               "choose another --out") from None
        with contextlib.suppress(OSError):  # the holder's pid, for the message; a full
            os.ftruncate(fd, 0)              # disk is reported by the write that matters
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


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
        write_atomically(self.path, self.record.to_dict(), "--out")
