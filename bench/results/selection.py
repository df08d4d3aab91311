"""``--select AXIS=V1,V2`` on result files: keep the cases whose axis values are listed (a
case without that axis is kept), as ``bench run --select`` keeps cases of a suite."""

from __future__ import annotations

import dataclasses

from bench.errors import BenchInputError
from bench.results.schema import CaseResult, RunRecord
from bench.spec.expand import LABEL


def select_cases(records: list[RunRecord], select: dict[str, set[str]],
                 sources: list[str]) -> list[RunRecord]:
    """Each record with only the selected cases; an axis no case has, or a value no case
    takes, is a typo: one line naming what the files hold."""
    if not select:
        return records
    values: dict[str, set[str]] = {}
    for record in records:
        for case in record.cases:
            for axis, value in _selectable(case).items():
                if value is not None:
                    values.setdefault(axis, set()).add(str(value))
    where = ", ".join(sources)
    for axis, wanted in select.items():
        if axis not in values:
            raise BenchInputError("--select", f"no case of {where} has an axis {axis!r}",
                                  key=axis, valid=sorted(values))
        if not wanted & values[axis]:
            raise BenchInputError("--select", f"no case of {where} has {axis} in "
                                  f"{', '.join(sorted(wanted))}", key=axis,
                                  valid=sorted(values[axis]))
    return [dataclasses.replace(record, cases=[
        case for case in record.cases
        if all(str(value) in select[axis] for axis, value in _selectable(case).items()
               if axis in select)]) for record in records]


def _selectable(case: CaseResult) -> dict[str, object]:
    """What --select matches on a case: its axes, and its benchmark's label as ``label``
    (bench.spec.expand.LABEL; None for an unlabelled one, which a label never selects), as
    a suite's cases are selected."""
    return case.axes if LABEL in case.axes else {**case.axes, LABEL: case.label}


def inherited_selection(current: RunRecord, select: dict[str, set[str]]
                        ) -> dict[str, set[str]]:
    """The cases a comparison judges: those ``select`` names, within the selection the
    current run was made with (``bench run --select``): a case it chose not to run is not
    missing from it."""
    merged = {axis: set(values) for axis, values in current.run.selection.items()}
    for axis, wanted in select.items():
        merged[axis] = merged[axis] & wanted if axis in merged else set(wanted)
    return merged
