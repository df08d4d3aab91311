"""The suites that ship with bench (``suites/`` in the repository, ``bench/suites/`` in an
installed wheel: setup.py maps one onto the other) and how a suite argument is read: a
path, or the name of a suite in ``./suites/`` or among the built-in ones."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchInputError

_PACKAGE = Path(__file__).resolve().parent.parent


def builtin_suites_dir() -> Path | None:
    """Where the built-in suites are: in the installed package, else in the source
    checkout this package runs from (an editable install)."""
    for folder in (_PACKAGE / "suites", _PACKAGE.parent / "suites"):
        if folder.is_dir() and any(folder.glob("*.toml")):
            return folder
    return None


def listed_suites() -> list[Path]:
    """The suites ``bench list`` shows: those in ./suites/, then the built-in ones that
    ./suites/ does not shadow (by name)."""
    local = sorted(Path("suites").glob("*.toml"))
    builtin = builtin_suites_dir()
    names = {p.stem for p in local}
    if builtin is None or (Path("suites").is_dir() and
                           Path("suites").resolve() == builtin.resolve()):
        return local
    return local + [p for p in sorted(builtin.glob("*.toml")) if p.stem not in names]


def resolve_suite(arg: str) -> str:
    """A suite argument as a path: itself when it names a file (or looks like a path),
    else ``suites/NAME.toml`` here, else the built-in suite NAME."""
    if Path(arg).exists() or arg.endswith(".toml") or "/" in arg:
        return arg
    for folder in (Path("suites"), builtin_suites_dir()):
        if folder is not None and (folder / f"{arg}.toml").is_file():
            return str(folder / f"{arg}.toml")
    names = sorted({p.stem for p in listed_suites()})
    raise BenchInputError(arg, "no such suite file, nor a suite of that name in ./suites/ "
                          "or among the built-in suites", valid=names or "a .toml file")
