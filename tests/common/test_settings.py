"""Every setting checked before a command starts anything, and places that cannot be written
(issue 23): one line that says what is wrong, exit 2, never a traceback, and nothing lost."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.commands import diff, fanout, testing
from common.commands.cli import main
from common.config import backend_names
from common.envs import ROOT
from tests.common.records import make_record

FIRST = backend_names()[0]


@pytest.fixture
def nothing_runs(monkeypatch):
    """A command that got past its checks fails the test: no env, no probe, no suite."""

    def started(*args, **kwargs):
        raise AssertionError("the command started work before its settings were checked")

    for module, name in (
        (fanout, "ensure_venv"),
        (fanout, "run_parallel"),
        (diff, "run_parallel"),
        (diff, "prepare_envs"),
        (testing, "run_suite"),
        (testing, "ensure_venv"),
        (testing, "ensure_backend_env"),
    ):
        monkeypatch.setattr(module, name, started)
    monkeypatch.delenv("PARITY_PYTHON", raising=False)
    monkeypatch.setenv("PARITY_BACKEND", FIRST)


def one_line(capfd) -> str:
    __tracebackhide__ = True
    out, err = capfd.readouterr()
    lines = err.split("\n")
    assert len(lines) == 2 and lines[1] == "" and "Traceback" not in err, (
        f"stderr={err!r}, but should be one line"
    )
    assert lines[0].startswith("paramparity: error: ")
    return lines[0]


COMMANDS = {
    "test": [],
    "diff": ["--backends", FIRST],
    "test-all": ["--backends", FIRST],
    "train": ["--backends", FIRST],
    "roundtrip": ["--backends", FIRST],
}


def not_a_python(tmp_path: Path) -> str:
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho 'not python' >&2\nexit 3\n")
    script.chmod(0o755)
    return str(script)


PYTHONS = {
    "missing": (lambda tmp: "/nonexistent/python", ": no such file"),
    "a folder": (lambda tmp: str(tmp), " is a folder, not an interpreter"),
    "/bin/sh": (lambda tmp: "/bin/sh", " is not a Python interpreter"),
    "not executable": (lambda tmp: str(Path(shutil.copy(__file__, tmp / "x.py"))), " is not executable"),
    "a script": (not_a_python, " is not a Python interpreter"),
    "without the framework": (lambda tmp: sys.executable, f" lacks the framework of {FIRST} ("),
}


@pytest.mark.parametrize("kind", PYTHONS)
@pytest.mark.parametrize("command", COMMANDS)
def test_parity_python_is_checked_up_front(tmp_path, capfd, monkeypatch, nothing_runs, command, kind):
    make_value, message = PYTHONS[kind]
    value = make_value(tmp_path)
    monkeypatch.setenv("PARITY_PYTHON", value)
    assert main([command, *COMMANDS[command]]) == 2
    line = one_line(capfd)
    assert line.startswith(f"paramparity: error: PARITY_PYTHON={value}{message}"), line


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("PARITY_EXAMPLES", "many", "PARITY_EXAMPLES='many', but should be an int >= 1"),
        ("PARITY_EXAMPLES", "0", "PARITY_EXAMPLES='0', but should be an int >= 1"),
        ("PARITY_SEED", "-1", "PARITY_SEED='-1', but should be an int >= 0"),
        ("PARITY_SEED", "x", "PARITY_SEED='x', but should be an int >= 0"),
        ("PARITY_DEVICE", "gpu", "PARITY_DEVICE='gpu' is not a device; valid: cpu, cuda"),
    ],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_each_setting_is_checked_up_front(
    capfd, monkeypatch, nothing_runs, command, variable, value, message
):
    monkeypatch.setenv(variable, value)
    assert main([command, *COMMANDS[command]]) == 2
    assert one_line(capfd) == f"paramparity: error: {message}"


@pytest.mark.parametrize("target", ["test", "diff", "test-all"])
def test_make_refuses_a_parity_python_that_is_a_shell(target):
    """Through make, as a user runs it: one line, and make's own note of the failed target."""
    env = {**os.environ, "PARITY_PYTHON": "/bin/sh", "PARITY_BACKEND": FIRST}
    result = subprocess.run(
        ["make", "-s", target, f"ARGS=--backends {FIRST}" if target != "test" else "ARGS="],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert result.returncode == 2 and len(ours) == 1, result.stderr
    assert ours[0].startswith("paramparity: error: PARITY_PYTHON=/bin/sh is not a Python interpreter")


# -- places that cannot be written ------------------------------------------------------------------
def saved_records(tmp_path: Path) -> Path:
    path = tmp_path / "saved.json"
    path.write_text(diff.render_json(diff.merge({FIRST: make_record(FIRST)})))
    return path


def test_a_reports_folder_that_is_a_file(tmp_path, capfd):
    out = tmp_path / "reports"
    out.write_text("in the way")
    assert (
        main(["diff", "--from", str(saved_records(tmp_path)), "--format", "json", "--out-dir", str(out)]) == 2
    )
    assert one_line(capfd) == (
        f"paramparity: error: cannot write to {out}: it is a file, not a folder; "
        "choose another place with --out-dir DIR"
    )
    assert out.read_text() == "in the way"


def test_a_full_disk_keeps_the_previous_report_whole(tmp_path, capfd, monkeypatch):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "diff.json").write_text("the previous report")

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    assert (
        main(["diff", "--from", str(saved_records(tmp_path)), "--format", "json", "--out-dir", str(out)]) == 2
    )
    assert one_line(capfd) == (
        f"paramparity: error: cannot write to {out / 'diff.json'}: No space left on device; "
        "choose another place with --out-dir DIR"
    )
    assert [p.name for p in out.iterdir()] == ["diff.json"] and (out / "diff.json").read_text() == (
        "the previous report"
    )


def test_test_all_checks_its_cache_folder_first(tmp_path, capfd, nothing_runs):
    cache = tmp_path / "cache"
    cache.write_text("in the way")
    assert main(["test-all", "--backends", FIRST, "--cache-dir", str(cache)]) == 2
    assert one_line(capfd) == (
        f"paramparity: error: cannot write to {cache}: it is a file, not a folder; "
        "choose another place with --cache-dir DIR"
    )


def unshare_works() -> bool:
    try:
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not unshare_works(),
    reason="needs `unshare -rm` (user and mount namespaces) to mount read-only or full places",
)


def in_namespace(mounts: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m common ARGS`` from the checkout, after ``mounts`` (shell) in a mount namespace
    of its own: what it mounts is seen by that command alone."""
    command = " ".join(f"'{arg}'" for arg in [sys.executable, "-m", "common", *args])
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"{mounts} && cd '{ROOT}' && exec {command}"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


@needs_unshare
@pytest.mark.parametrize(
    "args, place, option",
    [
        (["diff", "--backends", FIRST], "reports", "--out-dir"),
        (["test-all", "--backends", FIRST], ".pytest_cache", "--cache-dir"),
        (["train", "--backends", FIRST], "reports", "--out-dir"),
    ],
)
def test_a_read_only_checkout_is_one_line(args, place, option):
    result = in_namespace(f"mount --bind -o ro '{ROOT}' '{ROOT}'", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"paramparity: error: cannot write to {place}: Read-only file system; "
        f"choose another place with {option} DIR\n"
    )


@needs_unshare
def test_a_full_disk_is_one_line_and_keeps_the_previous_report(tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    saved = saved_records(tmp_path)
    fill = f"cp '{saved}' '{out}/diff.json' && (cat /dev/zero > '{out}/filler' 2>/dev/null; true)"
    result = in_namespace(
        f"mount -t tmpfs -o size=64k tmpfs '{out}' && {fill}",
        *["diff", "--from", str(saved), "--format", "json", "--out-dir", str(out)],
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"paramparity: error: cannot write to {out / 'diff.json'}: No space left on device; "
        "choose another place with --out-dir DIR\n"
    )
