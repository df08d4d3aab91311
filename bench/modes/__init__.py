"""Mode registry: how a case is run inside its worker (a closed loop of the engine's
sampler, a LoadGen scenario, a run to a target accuracy, an instruction count, ranks of a
process group). Each module in this package registers its modes on import, so adding a
mode is adding one file. The worker runs the mode a suite names (``[benchmark] mode``),
else the first built-in one whose ``claims`` the case's shape. Installed packages add
theirs through the entry-point group ``bench.modes`` (a module that registers modes, or a
``Mode`` class):

    [project.entry-points."bench.modes"]
    mymodes = "mypackage.bench_modes"
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys

from bench.modes.base import Mode
from bench.spec.model import CaseSpec

ENTRY_POINT_GROUP = "bench.modes"
_REGISTRY: dict[str, type[Mode]] = {}
_loaded = False
_HELPERS = ("base", "record", "trackers")


def register(cls: type[Mode]) -> type[Mode]:
    if cls.name in _REGISTRY:
        raise ValueError(f"mode {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _HELPERS and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as exc:  # noqa: BLE001 - a plugin's import may raise anything
            print(f"bench: warning: mode plugin {entry.name} ({entry.value}) left out: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if isinstance(loaded, type) and issubclass(loaded, Mode) and \
                _REGISTRY.get(getattr(loaded, "name", None)) is not loaded:
            register(loaded)


def mode_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_mode(name: str) -> type[Mode]:
    _load_all()
    return _REGISTRY[name]


def mode_for(case: CaseSpec) -> type[Mode]:
    """The mode the suite named for ``case``, else the first built-in that claims it."""
    _load_all()
    if case.mode is not None:
        return _REGISTRY[case.mode]
    for mode in sorted(_REGISTRY.values(), key=lambda m: m.order):
        if mode.claims(case):
            return mode
    raise LookupError(f"no mode claims case {case.case_id}")  # closed_loop claims every one
