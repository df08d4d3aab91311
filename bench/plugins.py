"""Registries filled by installed packages: the classes an entry-point group names."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)


def registrar(registry: dict[str, type], kind: str) -> Callable[[T], T]:
    """The ``@register`` decorator of one registry: a class under its ``name``, once."""

    def register(cls: T) -> T:
        if cls.name in registry:
            raise ValueError(f"{kind} {cls.name!r} registered twice")
        registry[cls.name] = cls
        return cls

    return register


def load_entry_points(group: str, kind: str, base: type, registry: dict[str, type],
                      register: Callable[[type], type]) -> None:
    """Import every entry point of ``group`` (a module that registers its classes on
    import, or a subclass of ``base``, registered here). A broken plugin is said in one
    line and left out, never a traceback that stops every suite."""
    for entry in importlib.metadata.entry_points(group=group):
        try:
            loaded = entry.load()
        except Exception as exc:  # noqa: BLE001 - a plugin's import may raise anything
            print(f"bench: warning: {kind} plugin {entry.name} ({entry.value}) left out: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if isinstance(loaded, type) and issubclass(loaded, base) and \
                registry.get(getattr(loaded, "name", None)) is not loaded:
            register(loaded)
