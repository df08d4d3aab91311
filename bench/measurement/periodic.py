"""A daemon thread that samples something every ``interval`` seconds (memory, clocks)."""

from __future__ import annotations

import threading


class PeriodicSampler:
    """``_sample`` once at ``start``, every ``interval`` seconds after, once at ``stop``."""

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self, thread: bool = True) -> None:
        """The first sample; with ``thread``, the sampling thread too (without: nothing
        to read between the ends, so no thread wakes inside the region)."""
        self._sample()
        if thread:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()
