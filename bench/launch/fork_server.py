"""A fork server: one interpreter per side of an A/B that has imported torch and the
worker once, and forks a fresh process for every round.

Starting a worker costs 2-4 s on a 2-core CPU (the interpreter, torch, scikit-learn for
the digits data), and a round of `bench ab` measures for about one: most of a session was
imports. The server pays them once; each forked child is a new process (its own pid,
process group, heap pages written after the fork, allocator arenas, threads), which is
what makes rounds independent; it runs the same ``bench.runners.worker.main`` a spawned
worker runs. What a child inherits is only imported code, never a thread pool in use or
a device context: the server imports modules and nothing else (no tensor op, so no
OpenMP team; OpenBLAS's idle threads are shut down around fork by its own atfork
handler), and only CPU cases are forked (never fork after CUDA initialisation).

Why not ``multiprocessing``'s forkserver: it serves the one environment and sys.path of
the process that starts it, while each side of an A/B imports another checkout under its
own environment (BENCH_TEST_SLOWDOWN, the allocator's MALLOC_* variables, which glibc
reads at start-up). So the parent starts this file as a script (``python -P PATH``, only
the standard library imported here, so it runs beside any checkout's ``bench``) with
PYTHONPATH naming the side's checkout; the worker it forks is that checkout's.

Protocol, one JSON object per line: the parent writes ``{"argv": [...], "stderr": PATH,
"env": {...}, "preload": [...]}``; the server imports what ``preload`` names (best
effort: a module another checkout lacks is reported and left out), forks, answers
``{"pid": N}``, waits for the child and answers ``{"pid": N, "wait_status": S}``. At
start it answers ``{"ready": [...modules imported...], "failed": {...}}``.

A preload entry ``module@folder`` is a user's module (a model factory's): ``folder`` goes
first on ``sys.path``, as the worker puts it (bench.workloads.user_model), then ``module``
is imported. User code may do what a fork must not follow: start a thread, initialise
CUDA. After importing it the server looks (``_fork_hazard``), and where it finds one it
forks nothing more: it answers ``{"hazard": REASON}`` (at start, in its hello) and the
parent spawns that case's worker instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

SCRIPT = Path(__file__).resolve()
# Imported by every server before its first fork: what every worker imports.
BASE_PRELOAD = ("torch", "bench.runners.worker")
# torch._dynamo: every torch.optim optimizer imports it on construction (2.2 s here), which
# each forked worker of a training case (and of an infer case that trains its model first)
# paid again: 2.0 of a linreg probe worker's 2.7 s. Not in BASE_PRELOAD: its 70 MiB of heap
# would count in the memory of an inference worker that never imports it.
DYNAMO = "torch._dynamo"
_PR_SET_PDEATHSIG = 1


# ---- the server (runs as a script, in the side's environment) ----

# The folders of user modules this server has imported (put first on sys.path): a worker
# of a case from another folder would find this folder's modules before its own.
_USER_FOLDERS: list[str] = []


def _import_all(entries: list[str], failed: dict[str, str]) -> list[str]:
    done = []
    for entry in entries:
        name, _, folder = entry.partition("@")
        if entry in failed or name in sys.modules or \
                (folder and _USER_FOLDERS and folder not in _USER_FOLDERS):
            continue  # imported already, or from another folder: _fork_hazard says so
        if folder:
            _USER_FOLDERS.append(folder)
            if folder not in sys.path:
                sys.path.insert(0, folder)
        try:
            importlib.import_module(name)
            done.append(entry)
        except Exception as exc:  # noqa: BLE001 - a module another checkout lacks
            failed[entry] = f"{type(exc).__name__}: {exc}"[:300]
    return done


def _fork_hazard(entries: list[str]) -> str | None:
    """Why a child forked now could break: a Python thread some import started (only the
    forking thread survives a fork, holding whatever locks the others held), CUDA
    initialised (a forked child cannot use it), or user modules imported from another
    folder than the case's (its worker could be handed another folder's module of the
    same name)."""
    if threading.active_count() > 1:
        names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        return f"an import started Python threads ({', '.join(names)[:200]})"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "an import initialised CUDA"
    for entry in entries:
        folder = entry.partition("@")[2]
        if folder and _USER_FOLDERS and folder not in _USER_FOLDERS:
            return f"it had imported user modules from {', '.join(_USER_FOLDERS)}, " \
                   f"not from {folder}"
    return None


def _child(request: dict, server_pid: int) -> None:
    """In the forked child: become a worker of its own process group, killed with the
    server, stdio on the request's files; run the worker; never return."""
    code = 1
    try:
        os.setsid()
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != server_pid:
            os._exit(1)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(err, 1)
        os.dup2(err, 2)
        os.close(err)
        os.close(null)
        os.environ.update(request.get("env", {}))
        worker = sys.modules["bench.runners.worker"]
        sys.argv = [worker.__file__, *request["argv"]]
        code = worker.main(list(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - said on the worker's stderr, then exit 1
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(preload: list[str]) -> None:
    """The server's loop: requests on stdin, answers on stdout, until stdin closes."""
    out = sys.stdout
    failed: dict[str, str] = {}
    ready = _import_all([*BASE_PRELOAD, *preload], failed)
    hazard = _fork_hazard(preload)
    print(json.dumps({"ready": ready, "failed": failed, "pid": os.getpid(),
                      "hazard": hazard}), file=out, flush=True)
    if "bench.runners.worker" not in sys.modules or hazard:
        return
    for line in sys.stdin:
        request = json.loads(line)
        wanted = list(request.get("preload", []))
        loaded = _import_all(wanted, failed)
        if hazard := _fork_hazard(wanted):
            print(json.dumps({"hazard": hazard}), file=out, flush=True)
            return
        out.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, os.getppid())
        print(json.dumps({"pid": pid, "preloaded": loaded}), file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "wait_status": status}), file=out, flush=True)


# ---- the parent's side ----

class ForkServerError(RuntimeError):
    """The server could not start or stopped answering."""


class ForkHazard(ForkServerError):
    """A request's imports left the server unsafe to fork (``_fork_hazard``): it has ended."""


class ForkServer:
    """A running server for one (code, environment): ``start`` forks one worker, which the
    isolation layer watches like a spawned one (``ForkedWorker`` has Popen's pid, poll,
    wait and returncode)."""

    def __init__(self, source: Path, env: Mapping[str, str], preload: tuple[str, ...] = (),
                 start_timeout_s: float = 120.0) -> None:
        self.source, self.env = Path(source), dict(env)
        # The server's own stderr (import warnings) goes to a file: a pipe nobody reads
        # would block it once full.
        fd, name = tempfile.mkstemp(prefix="bench-fork-server-", suffix=".err")
        self.stderr_path = Path(name)
        with os.fdopen(fd, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", str(SCRIPT), *preload], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, env=self.env, start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()), text=True)
        try:
            hello = self._answer(start_timeout_s)
        except (EOFError, json.JSONDecodeError):
            hello = None
        if hello is None or "ready" not in hello or hello.get("hazard") or \
                "bench.runners.worker" in hello.get("failed", {}):
            self.close()
            why = (hello or {}).get("hazard") or (hello or {}).get("failed") or \
                self._stderr_tail()
            raise ForkServerError(f"the fork server for {source} did not start: {why}")
        self.pid = int(hello["pid"])
        self.preloaded = list(hello["ready"])
        self.failed: dict[str, str] = dict(hello.get("failed", {}))
        self.current: ForkedWorker | None = None

    def _answer(self, timeout_s: float | None) -> dict | None:
        """The server's next line; None past the timeout; EOFError when it has ended."""
        assert self.proc.stdout is not None
        if timeout_s is not None:
            with selectors.DefaultSelector() as sel:
                sel.register(self.proc.stdout, selectors.EVENT_READ)
                if not sel.select(timeout_s):
                    return None
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError
        return json.loads(line)

    def _stderr_tail(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text[-500:] or "no answer"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, argv: list[str], stderr_path: Path, env: Mapping[str, str],
              preload: tuple[str, ...] = ()) -> ForkedWorker:
        """Fork one worker running ``bench.runners.worker.main(argv)``; ``env`` is set in
        the child on top of the server's (variables read at run time only)."""
        if self.current is not None and self.current.returncode is None:
            raise ForkServerError("one worker at a time: the last one has not ended")
        assert self.proc.stdin is not None
        request = {"argv": list(argv), "stderr": str(stderr_path), "env": dict(env),
                   "preload": list(preload)}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise ForkServerError(f"the fork server for {self.source} is gone: {exc}") from None
        try:
            answer = self._answer(None)
        except (EOFError, json.JSONDecodeError):
            answer = None
        if answer is not None and answer.get("hazard"):
            raise ForkHazard(f"the fork server did not fork: {answer['hazard']}")
        if answer is None or "pid" not in answer:
            raise ForkServerError(f"the fork server for {self.source} did not fork: "
                                  f"{self._stderr_tail()}")
        self.preloaded += answer.get("preloaded", [])
        self.current = ForkedWorker(self, int(answer["pid"]))
        return self.current

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin:
                self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdout:
                self.proc.stdout.close()
        self.stderr_path.unlink(missing_ok=True)


class ForkedWorker:
    """A worker the server forked, with the part of ``subprocess.Popen`` the isolation
    layer's watchdog uses. Its exit status comes from the server (its parent)."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server, self.pid = server, pid
        self.returncode: int | None = None

    def _collect(self, timeout_s: float | None) -> None:
        try:
            answer = self.server._answer(timeout_s)
        except (EOFError, json.JSONDecodeError):
            self.returncode = -signal.SIGKILL  # the server died: so did its child
            return
        if answer is not None:  # else: still running
            self.returncode = os.waitstatus_to_exitcode(int(answer["wait_status"]))

    def poll(self) -> int | None:
        if self.returncode is None:
            self._collect(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("forked worker", timeout or 0)
            self._collect(left)
        return self.returncode


def die_with_parent(parent_pid: int):  # noqa: ANN202 - a preexec_fn
    """Runs in the child between fork and exec: ask the kernel to SIGKILL us when the
    parent (thread) dies, then make sure it has not died already."""
    libc = ctypes.CDLL(None, use_errno=True)

    def in_child() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return in_child


class ForkServers:
    """Fork servers by (checkout, start-up environment), started on first use and closed
    on exit. A server that cannot start is remembered with its reason (the caller spawns
    workers instead).

    ``preload``: modules every server imports too (bench ab: torch._dynamo, where both
    sides' workers carry it alike). ``per_preload``: one server per set of modules a case
    preloads (its workload's), so a worker inherits only modules its case imports anyway
    and its memory reads as a spawned worker's (a sweep, whose figures a gate compares
    with stored ones; a shared server would hand a gpt worker the 51 MiB of scikit-learn
    that an earlier digits case imported)."""

    def __init__(self, preload: tuple[str, ...] = (), per_preload: bool = False) -> None:
        self._servers: dict[tuple, ForkServer] = {}
        self.refused: dict[tuple, str] = {}
        self.preload = tuple(preload)
        self.per_preload = per_preload

    def _preload_and_key(self, source: Path, env: Mapping[str, str],
                         preload: tuple[str, ...]) -> tuple[tuple[str, ...], tuple]:
        preload = tuple(dict.fromkeys((*self.preload, *preload)))  # each module once
        return preload, (str(Path(source).resolve()), tuple(sorted(env.items())),
                         preload if self.per_preload else ())

    def refusal(self, source: Path, env: Mapping[str, str],
                preload: tuple[str, ...] = ()) -> str | None:
        """Why ``get`` with these arguments gives no server (None: it gives one)."""
        return self.refused.get(self._preload_and_key(source, env, preload)[1])

    def give_up(self, server: ForkServer, reason: str) -> None:
        """Close ``server`` and start no other for its key: ``get`` answers None with
        ``reason`` (a request's import left it unsafe to fork)."""
        for key, held in list(self._servers.items()):
            if held is server:
                del self._servers[key]
                self.refused[key] = reason
        server.close()

    def get(self, source: Path, env: Mapping[str, str],
            preload: tuple[str, ...] = ()) -> ForkServer | None:
        """The server for ``source`` and ``env``; a server forks one worker at a time, so
        workers that run at once start from ForkServers of their own (bench ab's two
        sides each have a launcher)."""
        preload, key = self._preload_and_key(source, env, preload)
        if key in self.refused:
            return None
        server = self._servers.get(key)
        if server is not None and not server.alive():
            server.close()
            server = None
        if server is None:
            try:
                server = ForkServer(source, env, preload)
            except ForkServerError as exc:
                self.refused[key] = str(exc)
                return None
            self._servers[key] = server
        return server

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    def __enter__(self) -> ForkServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1:])
