"""Progress of a sweep: tqdm's bar on a terminal; in a log (CI, a file, a pipe) a line
each time another tenth of the cases is done, never a carriage return, so a CI log of
``make bench`` reads line by line."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

# A log line each time this share of the cases more is done (and at the end).
LOG_STEP = 0.1


class LineProgress:
    """tqdm's interface as a sweep uses it (update, write, set_postfix_str, close, and
    iteration), written as whole lines."""

    def __init__(self, total: int, desc: str, enabled: bool = True,
                 file: TextIO | None = None, iterable: Iterable[Any] = (),
                 clock: Any = time.monotonic) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.file = file or sys.stderr
        self.done = 0
        self._clock = clock
        self._started = clock()
        self._next = LOG_STEP
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterable:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled or self.total <= 0:
            return
        share = self.done / self.total
        if share + 1e-9 < self._next and self.done < self.total:
            return
        while self._next <= share + 1e-9:
            self._next += LOG_STEP
        elapsed = self._clock() - self._started
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        eta = f", about {_duration(left)} left" if self.done < self.total else ""
        print(f"{self.desc}: {self.done}/{self.total} cases ({share:.0%}) in "
              f"{_duration(elapsed)}{eta}", file=self.file, flush=True)

    def write(self, text: str, file: TextIO | None = None) -> None:
        print(text, file=file or self.file, flush=True)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """tqdm shows the running case; a log line per case would be noise."""

    def close(self) -> None:
        """Nothing held open."""


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def progress(total: int, desc: str, enabled: bool, iterable: Iterable[Any] | None = None,
             file: TextIO | None = None) -> Any:
    """tqdm on a terminal, else LineProgress (over ``iterable`` when given)."""
    stream = file or sys.stderr
    if enabled and stream.isatty():
        return tqdm(iterable, total=total, desc=desc, unit="case", file=stream,
                    dynamic_ncols=True)
    return LineProgress(total, desc, enabled, stream, iterable or ())
