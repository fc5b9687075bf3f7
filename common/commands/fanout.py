"""Run one subprocess per backend, each in its own environment, all at once.

Each child writes a JSON record to a file. Its stderr lines that start with ``progress:`` are
streamed with a ``[backend]`` prefix, so long steps show progress; the rest (framework log
noise) is kept and shown only if the child fails. A child that fails still yields a record (``ok: false``
with the error), so one broken backend never hides the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common import children
from common.config import DEFAULT_TIMEOUT
from common.envs import ROOT, backend_env, ensure_venv, env_ready, venv_python
from common.errors import USAGE_EXIT_CODE, UsageError

PROGRESS = "progress:"
_UMASK = os.umask(0)
os.umask(_UMASK)


def child_environment(parallel: int) -> dict[str, str]:
    """The environment for one of ``parallel`` children sharing this machine: each gets its share
    of the cores for its math library threads, unless the user set OMP_NUM_THREADS."""
    share = max(1, (os.cpu_count() or 1) // max(1, parallel))
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(share))}


LINE_LIMIT = 2000  # characters kept of one stderr line
Record = Mapping[str, Any]
Command = Callable[[str, Path], list[str]]


def module_command(module: str, *args: str) -> Command:
    """``.venvs/<backend>/bin/python -m <module> --backend <backend> --out <file> *args``."""

    def command(backend: str, out: Path) -> list[str]:
        env = backend_env(backend)
        python = venv_python(env)
        if not env_ready(env):  # missing, or half-made by a creation that was killed
            raise UsageError(f"environment .venvs/{env} is missing; create it with `make venv-{env}`")
        return [str(python), "-m", module, "--backend", backend, "--out", str(out), *args]

    return command


def prepare_envs(backends: Sequence[str]) -> None:
    """Create missing environments one at a time (pip and make are not parallel-safe); a failure
    surfaces later as that backend's error."""
    for env in dict.fromkeys(backend_env(backend) for backend in backends):
        try:
            ensure_venv(env)
        except UsageError as error:
            print(f"[{env}] {error}", file=sys.stderr, flush=True)


def run_parallel(
    backends: Sequence[str],
    command: Command,
    stream=sys.stderr,
    what: str = "running",
    timeout: float = DEFAULT_TIMEOUT,
    at_once: int | None = None,
) -> dict[str, Record]:
    """Every child at once, or ``at_once`` at a time (a benchmark runs alone); one that outlives
    ``timeout`` is stopped (its whole tree) and reported as timed out while the others finish.
    If the command is interrupted, every child stops and nothing is recorded."""
    records: dict[str, Record] = {}
    lock = threading.Lock()
    parallel = min(len(backends), at_once or len(backends))
    slots = threading.BoundedSemaphore(max(1, parallel))

    def say(text: str) -> None:
        with lock:
            print(text, file=stream, flush=True)

    def run(backend: str, out: Path) -> None:
        with slots:
            run_one(backend, out)

    def run_one(backend: str, out: Path) -> None:
        started = time.monotonic()
        try:
            argv = command(backend, out)
        except UsageError as error:
            records[backend] = {"backend": backend, "ok": False, "error": str(error)}
            say(f"[{backend}] FAILED: {error}")
            return
        say(f"[{backend}] {what} ...")
        last = "no output"

        def line(text: str) -> None:
            nonlocal last
            text = text.rstrip()[:LINE_LIMIT]  # a runaway stderr line cannot bloat a record
            if text.startswith(PROGRESS):
                say(f"[{backend}] {text.removeprefix(PROGRESS).strip()}")
            elif text:
                last = text

        try:
            process = children.Child(
                argv,
                cwd=ROOT,
                env=child_environment(parallel),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except children.Interrupted:
            return
        with process:
            timed_out = follow(process, line, started + timeout)
            status = process.wait()
        if children.interrupted():
            return  # the command is stopping: no record, no verdict
        try:
            record = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            record = {"backend": backend, "ok": False, "error": f"exited {status} without a record: {last}"}
        if timed_out:
            record = {"backend": backend, "ok": False, "error": f"timed out after {timeout:g}s"}
        elif status != 0 and record.get("ok"):
            record = {"backend": backend, "ok": False, "error": f"exited {status}: {last}"}
        records[backend] = record
        result = "done" if record.get("ok") else f"FAILED: {record.get('error')}"
        say(f"[{backend}] {result} ({time.monotonic() - started:.1f}s)")

    with children.temporary_directory() as scratch:
        threads = [threading.Thread(target=run, args=(b, scratch / f"{b}.json")) for b in backends]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if children.interrupted():
        raise children.Interrupted(children.interrupted())
    return {b: records[b] for b in backends}


AFTER_EXIT_S = 1.0  # how long stderr is still read once the child has ended


def follow(process: children.Child, line: Callable[[str], None], deadline: float) -> bool:
    """Pass each stderr line of ``process`` to ``line`` until it ends; stop its tree at
    ``deadline`` (monotonic). Never waits on end of file alone: something outside the tree may
    hold the pipe open, so once the child has ended, reading stops after AFTER_EXIT_S. True if
    the deadline stopped it."""
    fd = process.stderr.fileno()
    pending, skipping, timed_out, ended = b"", False, False, None
    while True:
        now = time.monotonic()
        if ended is None and process.poll() is not None:
            ended = now
        if ended is not None and now >= ended + AFTER_EXIT_S:
            break
        if ended is None and now >= deadline and not timed_out:
            timed_out = True
            process.stop(signal.SIGKILL)
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            if not skipping:
                line(raw.decode("utf-8", "replace"))
            skipping = False
        if len(pending) > LINE_LIMIT:  # a line without end: keep its start, drop the rest of it
            if not skipping:
                line(pending[:LINE_LIMIT].decode("utf-8", "replace"))
            pending, skipping = b"", True
    if pending and not skipping:
        line(pending.decode("utf-8", "replace"))
    return timed_out


def report_progress(text: str) -> None:
    """Called in a child: one line the parent streams to the user."""
    print(f"{PROGRESS} {text}", file=sys.stderr, flush=True)


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the checkout when inside it."""
    path = Path(path).absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def unwritable(path: Path, error: OSError, option: str) -> UsageError:
    """One line naming the place that cannot be written, why, and the option that picks another."""
    cause = (
        "it is a file, not a folder"
        if isinstance(error, (FileExistsError, NotADirectoryError))
        else (error.strerror or str(error))
    )
    return UsageError(f"cannot write to {shown(path)}: {cause}; choose another place with {option} DIR")


def writable_folder(folder: Path, option: str) -> Path:
    """``folder``, made if missing, once a file could be made in it: checked before a command
    runs for minutes, so a read-only checkout or a file in the way ends it in one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".paramparity-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise unwritable(folder, error, option) from None
    return folder


def write_output(path: Path, text: str | bytes, option: str = "--out-dir") -> Path:
    """``write_atomically`` for what a command leaves for the user: a failure (a full disk) is one
    line naming the file, and the previous file stays whole."""
    try:
        write_atomically(path, text)
    except OSError as error:
        raise unwritable(path, error, option) from None
    return path


def record_text(record: Record) -> str:
    return json.dumps(record, indent=1, sort_keys=True, default=_plain) + "\n"


def write_record(path: str, record: Record) -> None:
    write_atomically(Path(path), record_text(record))


def write_atomically(path: Path, text: str | bytes) -> None:
    """Write a temp file beside ``path``, then rename: a reader never sees half a file, and two
    writers leave one whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(text.encode() if isinstance(text, str) else text)
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a report is an ordinary file
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def child_main(
    description: str,
    produce: Callable[[argparse.Namespace], dict[str, Any]],
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
    argv: list[str] | None = None,
) -> int:
    """The entry point of every per-backend child: parse --backend/--out (and ``arguments``), call
    ``produce`` and write its record. A failure becomes a record too (ok: false, the error, the
    traceback), so the parent can still show every other backend. Exit 2 for the user's error."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backend", required=True, help="backend name or synonym")
    parser.add_argument("--out", required=True, help="where to write the JSON record")
    arguments(parser)
    args = parser.parse_args(argv)
    try:
        record, status = {"backend": args.backend, "ok": True, **produce(args)}, 0
    except UsageError as error:
        record, status = {"backend": args.backend, "ok": False, "error": str(error)}, USAGE_EXIT_CODE
    except Exception as error:
        record = {
            "backend": args.backend,
            "ok": False,
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)),
        }
        status = 1
    write_record(args.out, record)
    if status:
        print(f"{args.backend}: {record['error']}", file=sys.stderr)
    return status


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")
