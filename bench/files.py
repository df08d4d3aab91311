"""Files the user names: read bounded and checked, written atomically. Every problem is one
line (BenchInputError), never a traceback; a failed write leaves the old file as it was."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import stat
import tempfile
import tomllib
import zlib
from pathlib import Path
from typing import Any

from bench.errors import BenchInputError
from bench.units import MIB


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomically(path: Path, text: str, option: str | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and rename, with the mode
    a plain ``open`` would give (mkstemp's 0600 would otherwise survive the rename).
    A directory that cannot be written is one line (exit 2), and the old file stays."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BenchInputError(option or str(path), f"cannot write {path}: "
                              f"{exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BenchInputError(option or str(path), f"cannot write {path}: "
                                  f"{exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_bounded_text(path: str | Path, what: str, limit: int = 256 * MIB) -> str:
    """A regular file's UTF-8 text, at most ``limit`` bytes; anything else is one line. A
    gzip-compressed file (a committed baseline, ``baseline.json.gz``) is read as its text,
    decompressed to at most ``limit`` bytes."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BenchInputError(source, f"not a regular file; cannot read {what}")
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise BenchInputError(source, f"cannot read {what}: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise BenchInputError(source, f"larger than {limit // MIB} MiB; not a {what}")
    if raw[:2] == GZIP_MAGIC:
        raw = _gunzip_bounded(raw, source, what, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BenchInputError(source, f"not UTF-8 text (byte {exc.start}); not a "
                              f"{what}") from None


GZIP_MAGIC = b"\x1f\x8b"


def _gunzip_bounded(raw: bytes, source: str, what: str, limit: int) -> bytes:
    inflate = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer
    try:
        text = inflate.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise BenchInputError(source, f"corrupt gzip data ({exc}); not a {what}") from None
    if len(text) > limit or inflate.unconsumed_tail:
        raise BenchInputError(source, f"decompresses to more than {limit // MIB} MiB; not a "
                              f"{what}")
    if not inflate.eof:
        raise BenchInputError(source, f"truncated gzip data; not a {what}")
    return text


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """TOML text as a dict; malformed or too deeply nested TOML is one line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchInputError(source, f"malformed TOML: {exc}") from None
    except RecursionError:
        raise BenchInputError(source, "malformed TOML: nested too deeply") from None


PACKAGE_PREFIX = "package:"


def package_folder(spec: str) -> Path | None:
    """``package:NAME/SUB`` -> that folder of the installed package NAME, found without
    importing it (None: no such package)."""
    name, _, sub = spec[len(PACKAGE_PREFIX):].partition("/")
    found = importlib.util.find_spec(name) if name.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / sub
