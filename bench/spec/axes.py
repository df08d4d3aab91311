"""Declarations of axes and parameters, shared by workloads and the suite loader."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchInputError

_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}


@dataclass(frozen=True)
class Setting:
    """A typed value a suite may set: a matrix axis or a fixed parameter.

    ``choices`` restricts the values; ``minimum`` and ``maximum`` bound numbers (the
    minimum excluded with ``above_minimum``). Numbers are finite: NaN compares false
    with every bound, so it would slip through any of them.
    ``phases`` limits the phases where it means anything (None: all).
    ``variant`` marks a variant of the same model (precision, backend, int8, pruning...):
    accuracy parity compares each case with the case at this axis's default.
    """

    name: str
    kind: type
    default: Any = None
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    phases: tuple[str, ...] | None = None
    help: str = ""
    maximum: float | None = None
    above_minimum: bool = False
    variant: bool = False

    def valid_values(self) -> str:
        if self.choices is not None:
            return ", ".join(str(c) for c in self.choices)
        text = _TYPE_NAMES.get(self.kind, self.kind.__name__)
        if self.kind is float:
            text = "finite " + text
        if self.minimum is not None:
            text += f" {'>' if self.above_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            text += f" and <= {self.maximum:g}"
        return text

    def validate(self, value: Any, source: str, key: str) -> Any:
        """Return the value coerced to ``kind`` or raise a one-line BenchInputError."""
        ok_type = isinstance(value, self.kind) and not (
            self.kind is not bool and isinstance(value, bool)
        )
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok_type = float(value), True
        if not ok_type:
            raise BenchInputError(
                source, f"expected {_TYPE_NAMES.get(self.kind, self.kind.__name__)}, "
                f"got {type(value).__name__} {value!r}", key=key, valid=self.valid_values())
        if self.choices is not None and value not in self.choices:
            raise BenchInputError(source, f"unknown value {value!r}", key=key,
                                  valid=self.valid_values())
        if self.kind is float and not math.isfinite(value):
            raise BenchInputError(source, f"value {value!r} is not a finite number", key=key,
                                  valid=self.valid_values())
        if self.minimum is not None and (value < self.minimum or (
                self.above_minimum and value == self.minimum)):
            raise BenchInputError(source, f"value {value!r} is too small", key=key,
                                  valid=self.valid_values())
        if self.maximum is not None and value > self.maximum:
            raise BenchInputError(source, f"value {value!r} is too large", key=key,
                                  valid=self.valid_values())
        return value
