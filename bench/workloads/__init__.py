"""Workload registry. Each module in this package registers its workloads on import,
so adding a workload is adding one file. Installed packages add theirs through the entry-point
group ``bench.workloads`` (a module that registers workloads, or a ``Workload`` class):

    [project.entry-points."bench.workloads"]
    mymodels = "mypackage.bench_workloads"
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys

from bench.workloads.base import Workload

_REGISTRY: dict[str, type[Workload]] = {}
_loaded = False


def register(cls: type[Workload]) -> type[Workload]:
    if cls.name in _REGISTRY:
        raise ValueError(f"workload {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load_plugin(entry)


ENTRY_POINT_GROUP = "bench.workloads"


def _load_plugin(entry: importlib.metadata.EntryPoint) -> None:
    """One installed plugin; a broken one is said in one line and left out, never a
    traceback that stops every suite."""
    try:
        loaded = entry.load()
    except Exception as exc:  # noqa: BLE001 - a plugin's import may raise anything
        print(f"bench: warning: workload plugin {entry.name} ({entry.value}) left out: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return
    if isinstance(loaded, type) and issubclass(loaded, Workload) and \
            _REGISTRY.get(getattr(loaded, "name", None)) is not loaded:
        register(loaded)


def workload_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_workload(name: str) -> type[Workload]:
    _load_all()
    return _REGISTRY[name]
