"""One interface for starting workers: where a case's worker processes run.

Everything that measures cases starts its workers through a :class:`Launcher`: the sweep
(``bench run``, the pytest plugin, ``bench.run_model``), paired rounds (``bench ab``, a
variant against its reference), the max-batch search and ``bench tune``. Two launchers:

- :class:`LocalLauncher`: workers on this machine, each a fresh process under the
  isolation watchdog (bench.launch.isolation). A CPU worker is forked from a fork server
  of its code (bench.launch.fork_server: torch and the worker imported once, 1.0-2.3 s a
  worker instead of 2.5-4.4 s spawned); a CUDA worker, one under callgrind and any whose
  server refused are spawned.
- ``RayLauncher`` (bench.launch.ray_executor): each case a Ray task on the node Ray picks,
  which runs it there through a LocalLauncher.

Ranks are one level down: a case trained across ranks runs in one worker, which starts
its ranks with torch's ``elastic_launch`` (or ``torchrun`` starts them across nodes:
bench.runners.ranks); the launcher starts that worker like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from types import TracebackType

from bench.launch.fork_server import ForkServers
from bench.launch.isolation import WorkerCode, run_in_processes, run_isolated
from bench.results.schema import CaseResult
from bench.spec.model import CaseSpec


class Launcher:
    """Starts a case's workers and returns their record. ``run_once``: one worker;
    ``run_case``: the case as a sweep measures it (``budget.processes`` workers pooled, or
    one per seed of a time-to-accuracy case); ``submit``: ``run_case`` as a future (a
    launcher that runs cases at once, Ray's, returns before the case ends)."""

    name = "launcher"

    def run_once(self, case: CaseSpec, run_env: Mapping[str, str] | None = None,
                 timeout_scale: float = 1.0) -> CaseResult:
        raise NotImplementedError

    def run_case(self, case: CaseSpec) -> CaseResult:
        raise NotImplementedError

    def submit(self, case: CaseSpec) -> Future[CaseResult]:
        future: Future[CaseResult] = Future()
        try:
            future.set_result(self.run_case(case))
        except BaseException as exc:  # the caller's .result() raises it, as a pool would
            future.set_exception(exc)
        return future

    def refresh(self) -> None:
        """Start later workers from fresh servers (a new memory layout: a paired session
        calls this between passes over its cases)."""

    def close(self) -> None:
        """Stop what the launcher started (fork servers, a local Ray)."""

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LocalLauncher(Launcher):
    """Workers of ``code`` (this checkout by default) on this machine: CPU workers forked
    from fork servers when ``fork``, the rest spawned. ``servers``: fork servers shared
    with other launchers (the caller closes them), else the launcher's own, started on
    first use with ``preload`` (and one per preload set with ``per_preload``)."""

    name = "local"

    def __init__(self, code: WorkerCode | None = None, fork: bool = True,
                 servers: ForkServers | None = None, preload: tuple[str, ...] = (),
                 per_preload: bool = False) -> None:
        self.code = code or WorkerCode.this_checkout()
        self.fork = fork
        self._owns_servers = fork and servers is None
        if not fork:
            self.servers = None
        elif servers is not None:
            self.servers = servers
        else:
            self.servers = ForkServers(preload=preload, per_preload=per_preload)

    def run_once(self, case: CaseSpec, run_env: Mapping[str, str] | None = None,
                 timeout_scale: float = 1.0) -> CaseResult:
        return run_isolated(case, self.code, self.servers, run_env,
                            timeout_scale=timeout_scale)

    def run_case(self, case: CaseSpec) -> CaseResult:
        return run_in_processes(case, self.servers, self.code)

    def refresh(self) -> None:
        if self.servers is not None:
            self.servers.close()

    def close(self) -> None:
        if self._owns_servers and self.servers is not None:
            self.servers.close()


@contextlib.contextmanager
def local_launcher(launcher: Launcher | None = None, **options: object) -> Iterator[Launcher]:
    """``launcher`` as given (its owner closes it), else a LocalLauncher closed on exit."""
    if launcher is not None:
        yield launcher
        return
    with LocalLauncher(**options) as own:  # type: ignore[arg-type]
        yield own
