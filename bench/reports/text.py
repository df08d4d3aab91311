"""Plain-text helpers shared by the reports."""

from __future__ import annotations

import csv
import io
from typing import Any


def csv_text(headers: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(headers)
    writer.writerows(rows)
    return buffer.getvalue()
