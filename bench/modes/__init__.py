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
import pkgutil

from bench.modes.base import Mode
from bench.plugins import load_entry_points, registrar
from bench.spec.model import CaseSpec

ENTRY_POINT_GROUP = "bench.modes"
_REGISTRY: dict[str, type[Mode]] = {}
_loaded = False
_HELPERS = ("base", "record", "trackers")


register = registrar(_REGISTRY, "mode")


def _load_all() -> None:
    """The installed packages' modes, on the first lookup (the built-in ones are imported
    with this package, so a fork server's workers inherit them)."""
    global _loaded
    if not _loaded:
        _loaded = True
        load_entry_points(ENTRY_POINT_GROUP, "mode", Mode, _REGISTRY, register)


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
        if case.mode not in _REGISTRY:
            raise LookupError(f"mode {case.mode!r} is not installed in this worker's "
                              f"environment (modes here: {', '.join(sorted(_REGISTRY))})")
        return _REGISTRY[case.mode]
    for mode in sorted(_REGISTRY.values(), key=lambda m: m.order):
        if mode.claims(case):
            return mode
    raise LookupError(f"no mode claims case {case.case_id}")  # closed_loop claims every one


for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _HELPERS and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
