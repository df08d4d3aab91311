"""Workload registry. Each module in this package registers its workloads on import,
so adding a workload is adding one file. Installed packages add theirs through the entry-point
group ``bench.workloads`` (a module that registers workloads, or a ``Workload`` class):

    [project.entry-points."bench.workloads"]
    mymodels = "mypackage.bench_workloads"
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.plugins import load_entry_points, registrar
from bench.workloads.base import Workload

_REGISTRY: dict[str, type[Workload]] = {}
_loaded = False


register = registrar(_REGISTRY, "workload")


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    load_entry_points(ENTRY_POINT_GROUP, "workload", Workload, _REGISTRY, register)


ENTRY_POINT_GROUP = "bench.workloads"


def workload_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_workload(name: str) -> type[Workload]:
    _load_all()
    return _REGISTRY[name]
