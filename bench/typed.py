"""Dataclasses to and from JSON, checked against their type hints: the one reader and
writer of the result records (bench.results.schema) and of the case file a worker reads
(bench.spec.model.CaseSpec). Standard library only: every layer may use it."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any


def plain_numbers(values: list | tuple) -> bool:
    """Whether a list holds only ints and floats (raw samples): copied whole, not item by item."""
    return all(type(item) is float or type(item) is int for item in values)


def plain(value: Any, tuples_as_lists: bool = False) -> Any:
    """``dataclasses.asdict`` for a record: the same dicts, lists and values (with
    ``tuples_as_lists``, tuples too become lists, as JSON would read them back). A run file is
    rewritten after every case, and asdict copies each raw timing sample by a recursive
    call (0.3 s per rewrite of a 22-case file here); a list of plain numbers is copied
    whole."""
    kind = type(value)
    if kind is list or kind is tuple:
        if tuples_as_lists:
            kind = list
        if plain_numbers(value):
            return kind(value)
        return kind(plain(item, tuples_as_lists) for item in value)
    if kind is dict:
        return {plain(k, tuples_as_lists): plain(v, tuples_as_lists) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name), tuples_as_lists)
                for f in dataclasses.fields(value)}
    return value


class SchemaError(ValueError):
    pass


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "infinity": math.inf,
               "-infinity": -math.inf}
_TYPE_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "a boolean"}


def _fail(where: str, expected: str, value: Any) -> SchemaError:
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return SchemaError(f"{where}: expected {expected}, got {shown[:60]}")


def _float(value: Any, where: str) -> float:
    if type(value) is float:
        return value
    if isinstance(value, str) and value.lower() in _NON_FINITE:
        return _NON_FINITE[value.lower()]  # written as strings to stay standard JSON
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _fail(where, "a number", value)


@functools.cache
def _fields_of(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """A dataclass's resolved type hints and fields (resolving hints is slow; a result file
    builds thousands of records)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _build(tp: Any, value: Any, where: str, dropped: list[str] | None = None) -> Any:
    """``value`` checked against the type hint ``tp`` (and built, for dataclasses)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _build(inner[0], value, where, dropped)
        for option in inner:
            try:
                return _build(option, value, where)
            except SchemaError:
                continue
        raise _fail(where, " or ".join(str(a) for a in inner), value)
    if tp is float:
        return _float(value, where)
    if tp in (int, str, bool):
        if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
            return value
        raise _fail(where, _TYPE_NAMES[tp], value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, dropped)
    if origin is tuple:  # tuple[X, ...]: written as a JSON list
        if not isinstance(value, list | tuple):
            raise _fail(where, "a list", value)
        (item, _) = typing.get_args(tp)
        return tuple(_build(item, v, f"{where}[{i}]", dropped) for i, v in enumerate(value))
    if origin is list:
        if not isinstance(value, list):
            raise _fail(where, "a list", value)
        (item,) = typing.get_args(tp)
        if item is float:  # the raw samples: most of a file, so read without recursion
            return [v if type(v) is float else _float(v, f"{where}[{i}]")
                    for i, v in enumerate(value)]
        return [_build(item, v, f"{where}[{i}]", dropped) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, "an object", value)
        _, item = typing.get_args(tp)
        return {k: _build(item, v, f"{where}.{k}") for k, v in value.items()}
    raise SchemaError(f"{where}: no reader for type {tp}")


def from_dict(cls: type, data: Any, where: str = "", dropped: list[str] | None = None) -> Any:
    """Build a dataclass from JSON data, refusing missing keys and values of the wrong
    type, and unknown keys: those are refused, or, given a ``dropped`` list, left out and
    named there (a worker of a newer bench writing fields this one does not know)."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where or cls.__name__}: expected an object")
    hints, fields = _fields_of(cls)
    unknown = set(data) - set(fields)
    if unknown and dropped is None:
        raise SchemaError(f"{where or cls.__name__}: unknown keys {sorted(unknown)[:5]}")
    if unknown:
        dropped += [f"{where}.{k}" if where else k for k in sorted(unknown)]
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{where or cls.__name__}: missing key {name!r}")
            continue
        kwargs[name] = _build(hints[name], data[name], f"{where}.{name}" if where else name,
                              dropped)
    return cls(**kwargs)


