"""Children die with their parent (issue 23): the guard of ``common.children`` ends a command's
whole tree when the command ends, when asked, and when the parent dies by any signal; ``diff``
and ``test-all`` with a suite that hangs stop at once on SIGKILL, SIGTERM and SIGINT, leaving no
process and no temp folder. A timeout holds even when a grandchild keeps the pipe open.

Every process a test starts carries a marker in its environment, so the test finds its whole
tree, even a process that left its session; the tests wait on events (a file each hanging child
writes), never on a fixed sleep.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from common import children
from common.commands.fanout import run_parallel
from common.envs import ROOT
from tests.common.processes import AFTER_S, gone, marked


@pytest.fixture
def mark(monkeypatch):
    """A marker for every process this test starts; whatever a failed test leaves is killed."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv("PARITY_MARK", mark)
    yield mark
    for pid in marked(mark):
        os.kill(pid, signal.SIGKILL)


def wait_for_lines(path: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` holds ``count`` lines: each hanging child writes one when all of its tree
    is up. ``timeout`` only ends a broken test; the test never depends on it."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= count):
        assert process.poll() is None, f"the command ended first: {process.returncode}"
        assert time.monotonic() < deadline, f"{path} has not {count} lines after {timeout} s"
        time.sleep(0.05)


HANG = """\
#!{python}
# A backend that hangs: a temp folder, a grandchild in its group that ignores SIGTERM, and one
# that leaves the session holding stderr; then it says it is ready, and sleeps.
import os, signal, subprocess, sys, tempfile, time
tempfile.mkdtemp()
subprocess.Popen([sys.executable, "-c", "import signal, time; "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open({ready!r}, "a") as ready:
    ready.write(f"{{os.getpid()}}\\n")
time.sleep(600)
"""

DRIVER = """\
import sys
from pathlib import Path
from common.commands import fanout, testing
from common.commands.cli import main

hang = Path({hang!r})
fanout.ensure_venv = lambda env, **kwargs: hang  # every probe and suite runs the hanging script
fanout.venv_python = lambda env: hang
fanout.env_ready = lambda env: True
testing.ensure_venv = lambda env, **kwargs: hang
real_run_suite = testing.run_suite
testing.run_suite = lambda name, python, *args, **kwargs: real_run_suite(name, str(hang), *args, **kwargs)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def hanging(tmp_path):
    """A command line whose backends hang; its temp folder and its marker."""
    ready = tmp_path / "ready"
    hang = tmp_path / "hang.py"
    hang.write_text(HANG.format(python=sys.executable, ready=str(ready)))
    hang.chmod(0o755)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(hang=str(hang)))
    temp = tmp_path / "temp"
    temp.mkdir()
    mark = uuid.uuid4().hex
    env = {**os.environ, "PARITY_MARK": mark, "TMPDIR": str(temp), "PYTHONPATH": str(ROOT)}
    env.pop("PARITY_PYTHON", None)

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(driver), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    yield start, ready, temp, mark
    for pid in marked(mark):  # a failed test still leaves nothing behind
        os.kill(pid, signal.SIGKILL)


COMMANDS = {
    "diff": lambda out: ["diff", "--backends", "torch,jax", "--format", "json", "--out-dir", str(out)],
    "test-all": lambda out: ["test-all", "--backends", "torch", "--cache-dir", str(out)],
}


@pytest.mark.parametrize(
    "signum, status",
    [
        pytest.param(signal.SIGKILL, -9, id="SIGKILL"),
        pytest.param(signal.SIGTERM, 143, id="SIGTERM"),
        pytest.param(signal.SIGINT, 130, id="SIGINT"),
    ],
)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_stopped_command_leaves_no_process_and_no_temp_folder(hanging, tmp_path, command, signum, status):
    start, ready, temp, mark = hanging
    out = tmp_path / "out"
    process = start(*COMMANDS[command](out))
    wait_for_lines(ready, 2, process)  # two hang at once: two probes, or two suites on two workers
    assert len(marked(mark)) >= 2 * 4, "every hanging tree should be up"
    os.kill(process.pid, signum)  # the parent alone: its children lead groups of their own
    _, stderr = process.communicate(timeout=60)
    exit_status = process.returncode
    assert exit_status == status, f"exit={exit_status}, but should be {status} [{stderr[-900:]}]"
    assert not gone(mark), f"alive {AFTER_S} s after {signal.Signals(signum).name}: {marked(mark)}"
    assert list(temp.iterdir()) == [], "a temp folder outlived the command"
    if signum != signal.SIGKILL:
        name = signal.Signals(signum).name
        assert stderr.splitlines()[-1:] == [
            f"paramparity: interrupted by {name}: every child stopped, no report written"
        ], stderr
        assert "Traceback" not in stderr
        assert not [p for p in out.rglob("*") if p.is_file() and "test-all-seconds" not in p.name], (
            "a report was written by a stopped command"
        )


def test_a_second_ctrl_c_prints_no_traceback_and_leaves_no_child(hanging, tmp_path):
    start, ready, temp, mark = hanging
    process = start(*COMMANDS["diff"](tmp_path / "out"))
    wait_for_lines(ready, 2, process)
    os.kill(process.pid, signal.SIGINT)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert not gone(mark)


SECOND_SIGNAL_UNDER_THE_LOCK = """\
import os, signal, sys
from common import children
child = children.Child([sys.executable, "-c", "import time; time.sleep(600)"])
with children.handling_signals():
    try:
        os.kill(os.getpid(), signal.SIGINT)
        while True:
            pass
    except KeyboardInterrupt:
        with children._lock:  # where the clean-up is when the second Ctrl-C lands
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between these bytecodes
                pass
        children.wait_all()
print("exited")
"""


def test_a_second_ctrl_c_while_the_clean_up_holds_the_lock_does_not_hang(mark):
    """The race behind a rare hang of the test above, made certain: the second signal's handler
    takes the children's lock in the thread that already holds it."""
    result = subprocess.run(
        [sys.executable, "-c", SECOND_SIGNAL_UNDER_THE_LOCK],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "exited\n"), result.stderr[-900:]
    assert not gone(mark)


# -- the guard, alone -----------------------------------------------------------------------------
def test_the_guard_passes_on_output_and_status():
    result = children.run(
        [sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout) == (3, "out\n")
    crashed = children.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    assert crashed.returncode == -signal.SIGSEGV


def test_a_command_that_cannot_start_is_one_line():
    result = children.run(["/nonexistent/python"], capture_output=True, text=True)
    assert result.returncode == 127
    assert result.stderr == "paramparity: cannot run /nonexistent/python: No such file or directory\n"


def test_the_command_gets_a_temp_folder_that_goes_with_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    code = "import tempfile; print(tempfile.mkdtemp())"
    made = Path(children.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip())
    assert made.is_relative_to(tmp_path) and made.parent != tmp_path, made
    assert not made.exists() and list(tmp_path.iterdir()) == []


def test_what_a_command_leaves_behind_ends_with_it(mark):
    """A grandchild that left the session, holding stdout: the command's end is the caller's end."""
    code = (
        "import subprocess, sys; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)"
    )
    started = time.monotonic()
    result = children.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert result.returncode == 0 and time.monotonic() - started < 300
    assert not gone(mark)


def test_stop_escalates_to_sigkill_for_a_command_that_ignores_sigterm(mark):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(600)"
    )
    with children.Child([sys.executable, "-c", code], stdout=subprocess.PIPE) as child:
        assert child.stdout.readline() == b"up\n"
        child.stop(signal.SIGTERM)
        assert child.wait(timeout=300) == -signal.SIGKILL
    assert not gone(mark)


def test_no_child_starts_once_the_command_is_interrupted(monkeypatch):
    monkeypatch.setattr(children, "_interrupted", signal.SIGINT)
    with pytest.raises(children.Interrupted) as info:
        children.Child([sys.executable, "-c", "pass"])
    assert info.value.exit_status == 130


# -- timeouts (issue 24, item 8) -------------------------------------------------------------------
def test_a_timeout_holds_when_a_grandchild_keeps_stderr_open(mark):
    """The child hangs, and a grandchild outside its group holds its stderr: the timeout still
    ends the run, and both are gone."""
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
        "time.sleep(600)"
    )
    started = time.monotonic()
    records = run_parallel(
        ["a"], lambda backend, out: [sys.executable, "-c", code], stream=io.StringIO(), timeout=1
    )
    assert records["a"] == {"backend": "a", "ok": False, "error": "timed out after 1s"}
    assert time.monotonic() - started < 300, "the run waited for the grandchild's sleep"
    assert not gone(mark)


def test_a_finished_child_is_not_waited_on_for_a_pipe_a_grandchild_holds(mark):
    code = textwrap.dedent(
        """
        import json, subprocess, sys
        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)
        json.dump({'ok': True}, open(sys.argv[1], 'w'))
        """
    )
    started = time.monotonic()
    records = run_parallel(
        ["a"], lambda backend, out: [sys.executable, "-c", code, str(out)], stream=io.StringIO(), timeout=600
    )
    assert records["a"] == {"ok": True} and time.monotonic() - started < 300
    assert not gone(mark)


@pytest.mark.parametrize("value", ["0", "-1", "inf", "-inf", "nan", "1e999", "soon", ""])
@pytest.mark.parametrize("command", ["diff", "test-all", "train", "roundtrip", "bench"])
def test_timeout_takes_positive_finite_seconds_only(capfd, command, value):
    from common.commands.cli import main

    assert main([command, f"--timeout={value}"]) == 2  # "=": argparse reads "-1" as an option
    out, err = capfd.readouterr()
    expected = f"--timeout={value}, but should be a positive, finite number of seconds"
    assert err == f"paramparity: error: {expected}\n"
