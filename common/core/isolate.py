"""Run an untrusted reader in a child process, under a memory cap and a time limit.

A framework's own file reader is native code fed with hostile bytes: it may segfault, allocate
without bound or never return. Run in a child (a fresh interpreter, ``sys.executable``, that
inherits nothing but ``sys.path`` and the environment, and talks pickles over a socket pair),
any of those ends the child, not the caller, and becomes one ParamFileError that names the file
and the cause:

    model.params: the torch native reader crashed with SIGSEGV
    model.params: the torch native reader exceeded 512 MB
    model.params: the torch native reader timed out after 30 s

The child first runs an optional ``setup`` (import the framework, build the model) with neither
limit applied; then the memory cap (RLIMIT_AS: what the child already maps, plus ``memory_mb``)
and the clock start, and the reader runs. Results come back pickled (numpy arrays pickle).

``run_isolated`` is one call in a fresh child. ``Worker`` keeps one child for many calls, so a
framework is imported once, not once per file: ``shared_worker`` keeps one per key (a backend's
native reader) for the life of the process; a call that crashes, runs out of memory or times out
ends that child, and the next call starts a fresh one. Functions and setups must be picklable:
importable module-level functions (not ones of ``__main__``), or ``functools.partial`` of them.
"""

from __future__ import annotations

import atexit
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from common import children
from common.core.untrusted import printable
from common.errors import ParamFileError, ParityError, UsageError

DEFAULT_MEMORY_MB = 512
DEFAULT_TIMEOUT_S = 30.0  # a hang guard, not a speed test: a reader on a busy 2-core machine took over 10 s
SETUP_TIMEOUT_S = 300.0  # importing a framework and building a model, before any limit applies


@dataclass(frozen=True)
class Limits:
    memory_mb: int = DEFAULT_MEMORY_MB  # on top of what the child maps after setup
    timeout_s: float = DEFAULT_TIMEOUT_S  # wall clock, per call
    setup_timeout_s: float = SETUP_TIMEOUT_S


@dataclass(frozen=True)
class Outcome:
    """How one isolated call ended. ``kind``: ok (``value`` is the result), refused (the reader
    raised ParamFileError; ``message``), error (any other exception; ``type_name``, ``message``),
    memory, crash (``message`` names the signal or exit status), timeout."""

    kind: str
    value: Any = None
    type_name: str = ""
    message: str = ""


class ReaderError(Exception):
    """The isolated reader raised something other than ParamFileError; the caller decides what it
    means. Carries the exception's type name and message (the exception itself may not unpickle)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


def run_isolated(
    func: Callable[..., Any],
    *args: Any,
    where: str,
    what: str = "reader",
    setup: Callable[[], Any] | None = None,
    limits: Limits = Limits(),
) -> Any:
    """``func(*args)`` (or ``func(setup(), *args)``) in a fresh child; its result, or:
    ParamFileError for a refusal, a crash, an out-of-memory or a timeout (message
    "``where``: ``what`` crashed with SIGSEGV"...; a refusal that does not name ``where`` gets it
    in front); ReaderError for any other exception."""
    with Worker(limits, setup) as worker:
        outcome = worker.call(func, *args)
    return outcome_value(outcome, where, what, limits)


def outcome_value(outcome: Outcome, where: str, what: str, limits: Limits) -> Any:
    if outcome.kind == "ok":
        return outcome.value
    if outcome.kind == "refused":
        message = printable(outcome.message, 2000)  # escaped, whoever wrote it
        raise ParamFileError(message if message.startswith(where) else f"{where}: {message}")
    if outcome.kind == "error":
        raise ReaderError(outcome.type_name, outcome.message)
    if outcome.kind == "memory":
        raise ParamFileError(f"{where}: {what} exceeded {limits.memory_mb} MB")
    if outcome.kind == "timeout":
        raise ParamFileError(f"{where}: {what} timed out after {limits.timeout_s:g} s")
    raise ParamFileError(f"{where}: {what} {outcome.message}")


class Worker:
    """One child process serving calls one at a time, each under ``limits``. A call that crashes,
    runs out of memory or times out ends the child; the next call starts a fresh one."""

    def __init__(self, limits: Limits = Limits(), setup: Callable[[], Any] | None = None) -> None:
        self.limits = limits
        self.setup = setup
        self._process: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, func: Callable[..., Any], *args: Any) -> Outcome:
        with self._lock:
            if self._process is None:
                self._start()
            try:
                self._conn.send((func, args))
            except (BrokenPipeError, ConnectionResetError, EOFError):
                return self._died()
            # The clock starts once the child has the call unpickled (its modules imported).
            started = self._receive(self.limits.setup_timeout_s)
            if started.kind != "started":
                return started
            return self._receive(self.limits.timeout_s)

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._conn.send(None)
            self._process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._stop()

    # -- machinery --------------------------------------------------------------------------------
    def _start(self) -> None:
        # A plain subprocess of the same interpreter, not multiprocessing's spawn: spawn re-runs
        # the caller's main script in the child, which breaks (or repeats) unguarded scripts.
        # Under a guard (common.children): the reader dies with this process, however it ends.
        parent_end, child_end = socket.socketpair()
        with child_end:
            self._process = children.Child(
                [sys.executable, "-c", _BOOTSTRAP, str(child_end.fileno())],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # a reader's chatter must not mix into our output
            )
        self._conn = Connection(parent_end.detach())
        self._conn.send(list(sys.path))  # plain strings: nothing to import before sys.path is set
        self._conn.send((self.limits.memory_mb, self.setup))
        ready = self._receive(self.limits.setup_timeout_s)
        if ready.kind == "ready":
            return
        self._stop()
        if ready.kind == "usage":
            raise UsageError(ready.message)
        raise RuntimeError(f"isolated reader setup failed ({ready.kind}): {ready.type_name} {ready.message}")

    def _receive(self, timeout: float) -> Outcome:
        try:
            if not self._conn.poll(timeout):
                self._stop()
                return Outcome("timeout")
            kind, value, type_name, message = self._conn.recv()
        except (EOFError, OSError):
            return self._died()
        if kind in ("memory", "crash"):
            self._stop()
        return Outcome(kind, value, type_name, message)

    def _died(self) -> Outcome:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stop()
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return Outcome("crash", message=f"crashed with {name}")
        return Outcome("crash", message=f"exited with status {code} without a result")

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.stop(signal.SIGKILL)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill_group()
                self._process.wait()
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None


_BOOTSTRAP = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = conn.recv()\n"
    "from common.core.isolate import _serve\n"
    "_serve(conn)\n"
)


_SHARED: dict[Hashable, tuple[int, Worker]] = {}


def shared_worker(key: Hashable, setup: Callable[[], Any] | None, limits: Limits = Limits()) -> Worker:
    """The process-wide worker for ``key``, created (with ``setup``) on first use."""
    pid, worker = _SHARED.get(key, (None, None))
    if worker is None or pid != os.getpid():  # a forked copy must not share its parent's pipe
        worker = Worker(limits, setup)
        _SHARED[key] = (os.getpid(), worker)
    return worker


@atexit.register
def close_shared() -> None:
    for pid, worker in _SHARED.values():
        if pid == os.getpid():
            worker.close()
    _SHARED.clear()


def _serve(conn: Any) -> None:
    """The child: setup, then limits, then one call per request until told to stop."""
    try:
        memory_mb, setup = conn.recv()
        state = setup() if setup is not None else None
    except BaseException as error:  # noqa: BLE001 - everything is reported to the parent
        kind = "usage" if isinstance(error, ParityError) else "error"
        conn.send((kind, None, type(error).__name__, str(error)))
        return
    _limit_memory(memory_mb)
    conn.send(("ready", None, "", ""))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as error:  # the call could not be unpickled (its module failed to import)
            conn.send(("error", None, type(error).__name__, f"cannot load the call: {error}"))
            continue
        if request is None:
            return
        func, args = request
        conn.send(("started", None, "", ""))
        try:
            reply = ("ok", func(state, *args) if setup is not None else func(*args), "", "")
        except MemoryError:
            reply = ("memory", None, "", "")
        except ParamFileError as error:
            reply = ("refused", None, "ParamFileError", str(error))
        except BaseException as error:  # noqa: BLE001 - RecursionError, SystemExit... all reported
            reply = ("error", None, type(error).__name__, str(error))
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("memory", None, "", ""))
        except Exception as error:  # an unpicklable result
            conn.send(("error", None, type(error).__name__, f"result could not be sent back: {error}"))
        if reply[0] == "memory":
            return


def _limit_memory(memory_mb: int) -> None:
    """RLIMIT_AS = what the process maps now + ``memory_mb``; no core files."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cap = _mapped_bytes() + memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the native reader of a backend -------------------------------------------------------------------
def native_setup(adapter: str, spec_data: dict[str, Any]) -> Any:
    """In the child, before the limits: the adapter ("module:Class", imported in an environment
    inherited from the parent, which set the framework's variables), warmed up by building and
    running a model, so the framework's own start-up is not counted against the reader. The core
    imports an adapter by its class, never a backend by name: that is the registry's job."""
    import importlib

    from common.core.spec import spec_from_dict

    module, _, name = adapter.partition(":")
    backend = getattr(importlib.import_module(module), name)()
    backend.materialize(backend.build_mlp(spec_from_dict(spec_data)))
    return backend


def native_read(backend: Any, spec_data: dict[str, Any], path: str) -> tuple[list[str], dict[str, Any]]:
    """In the child, under the limits: a fresh model of the spec, and the framework's own reader."""
    from common.core.spec import spec_from_dict

    model = backend.build_mlp(spec_from_dict(spec_data))
    backend.materialize(model)
    entries, values = backend.native_file_values(model, path)
    return list(entries), dict(values)


def read_native_file_isolated(
    adapter: str, spec_data: dict[str, Any], path: str, *, where: str, what: str
) -> Any:
    """``native_read`` in the adapter's shared worker; exceptions as ``run_isolated`` raises them."""
    limits = Limits()
    worker = shared_worker(("native", adapter), partial(native_setup, adapter, spec_data), limits)
    return outcome_value(worker.call(native_read, spec_data, path), where, what, limits)
