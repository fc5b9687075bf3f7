"""Children that die with their parent, however it stops. Standard library only: make runs
``common.envs`` with the system Python, and this file is also the guard itself.

Every child a command starts runs under a guard: a small process (this file, run with
``python -I -S``) that leads a new process group, runs the command in it and owns everything the
command starts. The guard ends the whole tree, the group and anything that left it (the guard is
a child subreaper, so orphans come back to it), and removes the tree's temp folder:

- when the command ends (a grandchild left behind cannot hold a pipe open);
- when the parent asks (``Child.stop``: a byte on the control pipe);
- when the parent dies, by any signal, SIGKILL included: the control pipe's write end closes with
  it, and the guard also removes the parent's scratch folders (``temporary_directory``).

A stop sends the signal to the tree, waits ``GRACE_S`` for the command, then SIGKILLs what is
left. The command gets its own ``TMPDIR`` inside the guard's, so nothing it leaves in temp
outlives it. The guard exits with the command's status (dying of the same signal), so a caller
reads it as it would the command's.

The parent's side: ``Child`` (a ``subprocess.Popen``) and ``run`` (``subprocess.run``), and for
command-line entry points ``handling_signals``: SIGINT, SIGTERM or SIGHUP stop every child at
once and raise ``Interrupted`` (a KeyboardInterrupt) in the main thread; a second signal
SIGKILLs what is left and raises nothing, so it never prints a traceback.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

GRACE_S = 2.0  # from the stop signal to SIGKILL
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_GUARD = os.path.abspath(__file__)

# Reentrant: a signal handler runs in the main thread, maybe while that thread holds the lock
# (a second Ctrl-C during the clean-up), and takes it again to stop the children.
_lock = threading.RLock()
_live: set[Child] = set()
_scratch: list[str] = []  # the parent's temp folders: a guard removes them if the parent dies
_interrupted = 0  # the signal that interrupted this process, once one has


class Interrupted(KeyboardInterrupt):
    """The command was stopped by ``signum``; it exits with 128 + signum (130 for Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def interrupted() -> int:
    """The signal that interrupted this process, or 0."""
    return _interrupted


class Child(subprocess.Popen):
    """``subprocess.Popen`` of ``args`` under a guard, in a new process group. ``stop`` ends the
    command's whole tree; so does this process's death."""

    def __init__(self, args, **kwargs) -> None:
        if _interrupted:
            raise Interrupted(_interrupted)  # no new child once the command is stopping
        if isinstance(args, (str, bytes)) or kwargs.get("shell"):
            raise TypeError("Child takes an argument list, not a shell command")
        read, self._control = os.pipe()  # both ends close-on-exec; read goes to the guard only
        with _lock:
            cleanup = [arg for folder in _scratch for arg in ("--cleanup", folder)]
        argv = [sys.executable, "-I", "-S", _GUARD, str(read), *cleanup, "--", *map(os.fspath, args)]
        try:
            super().__init__(
                argv, pass_fds=(*kwargs.pop("pass_fds", ()), read), start_new_session=True, **kwargs
            )
        except BaseException:
            self._release()
            raise
        finally:
            os.close(read)
        with _lock:
            _live.add(self)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the guard to end the tree: ``signum``, then SIGKILL after GRACE_S."""
        with _lock:
            if self._control is None:
                return
            with contextlib.suppress(OSError):  # the guard has already gone
                os.write(self._control, bytes([signum]))

    def wait(self, timeout: float | None = None) -> int:
        status = super().wait(timeout)
        self._release()
        return status

    def poll(self) -> int | None:
        status = super().poll()
        if status is not None:
            self._release()
        return status

    def kill_group(self) -> None:
        """The last resort, for a guard that did not end its tree: SIGKILL its group."""
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)

    def _release(self) -> None:
        with _lock:
            _live.discard(self)
            # None first: a signal handler that runs in between sees no descriptor, never a closed one.
            control, self._control = self._control, None
            if control is not None:
                os.close(control)


def run(args, *, input=None, capture_output=False, timeout=None, check=False, **kwargs):
    """``subprocess.run`` with the child under a guard; past ``timeout`` the whole tree ends."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with Child(args, **kwargs) as child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            child.stop(signal.SIGKILL)
            child.communicate()
            raise
        except BaseException:
            child.stop(signal.SIGKILL)
            raise
    if check and child.returncode:
        raise subprocess.CalledProcessError(child.returncode, args, stdout, stderr)
    return subprocess.CompletedProcess(args, child.returncode, stdout, stderr)


@contextlib.contextmanager
def temporary_directory(prefix: str = "paramparity-") -> Iterator[Path]:
    """``tempfile.TemporaryDirectory`` that every guard started meanwhile removes if this process
    dies without removing it."""
    folder = tempfile.mkdtemp(prefix=prefix)
    with _lock:
        _scratch.append(folder)
    try:
        yield Path(folder)
    finally:
        with _lock:
            _scratch.remove(folder)
        shutil.rmtree(folder, ignore_errors=True)


def stop_all(signum: int = signal.SIGTERM) -> None:
    with _lock:
        live = list(_live)
    for child in live:
        child.stop(signum)


def wait_all(timeout: float = GRACE_S + 1.0) -> None:
    """Wait for every child to end; SIGKILL the group of any still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    with _lock:
        live = list(_live)
    for child in live:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill_group()
            child.wait()


def interrupt(signum: int) -> None:
    """This process is stopping: no new child starts, and every child is asked to stop."""
    global _interrupted
    _interrupted = _interrupted or signum
    stop_all(signal.SIGTERM)


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """For a command's main thread: SIGINT, SIGTERM and SIGHUP stop every child and raise
    Interrupted; a second one SIGKILLs the children and raises nothing."""

    def handler(signum: int, frame) -> None:
        if _interrupted:
            stop_all(signal.SIGKILL)
            return
        interrupt(signum)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOPS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# == the guard: this file, run as ``python -I -S children.py CONTROL_FD [--cleanup DIR]... -- ARGV`` ==
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _guard(argv: list[str]) -> int:
    control = int(argv[0])
    split = argv.index("--")
    cleanup = argv[2:split:2]  # the values of --cleanup DIR pairs
    command = argv[split + 1 :]
    os.set_inheritable(control, False)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of the tree become ours to end
    me = os.getpid()

    def die_with_guard() -> None:  # in the command's process, before exec
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != me:
            os._exit(137)

    temp = tempfile.mkdtemp(prefix="paramparity-")
    try:
        try:
            child = subprocess.Popen(
                command, env={**os.environ, "TMPDIR": temp}, close_fds=False, preexec_fn=die_with_guard
            )
        except OSError as error:
            print(f"paramparity: cannot run {command[0]}: {error.strerror}", file=sys.stderr, flush=True)
            return 126 if isinstance(error, PermissionError) else 127
        wakeup, woken = os.pipe()
        os.set_blocking(woken, False)
        keep = {0, 1, 2, control, wakeup, woken}
        for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
            if fd not in keep:  # the command's descriptors are the command's, not ours to hold open
                with contextlib.suppress(OSError):
                    os.close(fd)
        signal.set_wakeup_fd(woken)
        for signum in STOPS:  # a stop signal sent to the guard stops the tree, through the wakeup pipe
            signal.signal(signum, lambda *_: None)
        orphaned = _watch(child, control, wakeup)
        status = child.wait()
        _end_tree(me, signal.SIGKILL)  # what the command left behind
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    if orphaned:
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
    if status < 0:  # die of the same signal, so the caller sees the command's status
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.set_wakeup_fd(-1)
        if -status not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-status, signal.SIG_DFL)
        os.kill(me, -status)
        return 128 - status
    return status


def _watch(child: subprocess.Popen, control: int, wakeup: int) -> bool:
    """Until the command ends, or a stop: then end the tree. True if the parent died."""
    try:
        exited = os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # no pidfd: poll
        exited = None
    while True:
        watched = [control, wakeup] + ([exited] if exited is not None else [])
        ready, _, _ = select.select(watched, [], [], None if exited is not None else 0.1)
        if exited in ready or (exited is None and child.poll() is not None):
            return False
        if control in ready:
            request = os.read(control, 1)
            signum = request[0] if request else signal.SIGTERM
            _stop(child, signum, exited)
            return not request
        if wakeup in ready:
            received = os.read(wakeup, 64)
            _stop(child, received[0] if received else signal.SIGTERM, exited)
            return False


def _stop(child: subprocess.Popen, signum: int, exited: int | None) -> None:
    """``signum`` to the tree, GRACE_S for the command to end, then SIGKILL to what is left (not
    reaped here: the command's status is ``child.wait``'s)."""
    me = os.getpid()
    _signal_tree(me, signum)
    if signum != signal.SIGKILL:
        deadline = time.monotonic() + GRACE_S
        while child.poll() is None and time.monotonic() < deadline:
            if exited is not None:
                select.select([exited], [], [], max(0.0, deadline - time.monotonic()))
            else:
                time.sleep(0.05)
        _signal_tree(me, signal.SIGKILL)


def _signal_tree(root: int, signum: int) -> list[int]:
    pids = _tree(root)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
    return pids


def _end_tree(root: int, signum: int) -> None:
    """Signal every descendant until none is left, reaping the orphans that came to us."""
    for _ in range(200):  # a tree that keeps forking still ends: each round kills what it finds
        pids = _signal_tree(root, signum)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        if not pids:
            return
        time.sleep(0.02)


def _tree(root: int) -> list[int]:
    """The live (not zombie) descendants of ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
