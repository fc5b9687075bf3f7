"""Hostile parameter and spec files (issue 10): each is refused with one escaped line and exit 2,
quickly, by the command line and by the library; a small fuzz campaign finds nothing bad; the
isolation of native readers turns crashes, memory hogs and hangs into ParamFileError."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time

import pytest

from common.commands import cli, fuzz
from common.core import isolate, portable
from common.core.isolate import Limits
from common.core.models import TIED
from common.core.untrusted import cause_line, load_json, printable
from common.envs import ROOT
from common.errors import ParamFileError
from tests.common.hostile_files import (
    HOSTILE_FILES,
    HOSTILE_SPECS,
    file_with_escapes_everywhere,
    many_tensors,
    spec_named_with_escapes,
)

DEADLINE_S = 10.0


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """The command line in a process of its own, as a user runs it."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "common", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"},
    )
    return result, time.monotonic() - started


def run_cli_here(capfd, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """The same command line in this process (each new process costs a third of a second):
    capfd sees what Python and native code write to the file descriptors, and an exception that
    escapes ``main`` fails the test just as its traceback would."""
    capfd.readouterr()
    started = time.monotonic()
    try:
        status = cli.main(list(args))
    except SystemExit as exit_:  # argparse's own refusals
        status = exit_.code
    elapsed = time.monotonic() - started
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["paramparity", *args], status, out, err), elapsed


def cli_cases(kinds, in_a_process: tuple[str, ...]) -> list:
    """Every kind through the command line in this process; ``in_a_process`` also through a
    process of its own, as a user runs it."""
    return [pytest.param(kind, False, id=f"{kind}-here") for kind in sorted(kinds)] + [
        pytest.param(kind, True, id=f"{kind}-own process") for kind in in_a_process
    ]


def assert_one_clean_line(stderr: str) -> None:
    __tracebackhide__ = True
    lines = stderr.split("\n")
    assert len(lines) == 2 and lines[1] == "", f"stderr={stderr!r}, but should be exactly one line"
    assert lines[0].isprintable(), f"stderr={stderr!r}, but should hold no control character"
    assert "Traceback" not in stderr


# A path that is no file, a huge header, the most tensors.
@pytest.mark.parametrize(
    "kind, in_a_process", cli_cases(HOSTILE_FILES, ("FIFO", "header of 100 MiB", "1,000,000 tensors"))
)
def test_cli_inspect_refuses_in_one_clean_line(tmp_path, capfd, kind, in_a_process):
    path = HOSTILE_FILES[kind](tmp_path)
    args = ("inspect", str(path), "--spec", "tied")
    result, elapsed = run_cli(*args) if in_a_process else run_cli_here(capfd, *args)
    assert result.returncode == 2, f"exit={result.returncode}, but should be 2 [{result.stderr[-500:]!r}]"
    assert_one_clean_line(result.stderr)
    assert result.stderr.startswith("paramparity: error: ")
    assert elapsed < DEADLINE_S, f"took {elapsed:.1f} s, but should be under {DEADLINE_S} s"


@pytest.mark.parametrize("kind", sorted(HOSTILE_FILES))
def test_read_params_raises_param_file_error(tmp_path, kind):
    path = HOSTILE_FILES[kind](tmp_path)
    started = time.monotonic()
    with pytest.raises(ParamFileError) as info:
        portable.read_params(path, TIED)
    elapsed = time.monotonic() - started
    assert str(info.value).isprintable(), f"message={str(info.value)!r}, but should be one clean line"
    assert elapsed < DEADLINE_S, f"took {elapsed:.1f} s, but should be under {DEADLINE_S} s"


@pytest.mark.parametrize("kind", ["FIFO", "/dev/zero", "300-character file name", "directory"])
def test_paths_that_are_not_regular_files_are_refused_at_once(tmp_path, kind):
    path = HOSTILE_FILES[kind](tmp_path)
    started = time.monotonic()
    with pytest.raises(ParamFileError, match="cannot read"):
        portable.read_params(path, TIED)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("kind, in_a_process", cli_cases(HOSTILE_SPECS, ("nested 1000 deep", "not UTF-8")))
def test_cli_spec_refuses_hostile_spec_files(tmp_path, capfd, kind, in_a_process):
    path = HOSTILE_SPECS[kind](tmp_path)
    result, elapsed = run_cli("spec", str(path)) if in_a_process else run_cli_here(capfd, "spec", str(path))
    assert result.returncode == 2, f"exit={result.returncode}, but should be 2 [{result.stderr[-500:]!r}]"
    assert_one_clean_line(result.stderr)
    assert elapsed < DEADLINE_S


def test_hostile_names_are_printed_escaped(tmp_path):
    """Accepted input (a spec, a file the reference reads) still prints nothing raw."""
    spec_result, _ = run_cli("spec", str(spec_named_with_escapes(tmp_path)))
    inspect_result, _ = run_cli("inspect", str(file_with_escapes_everywhere(tmp_path)))
    for result in (spec_result, inspect_result):
        assert result.returncode == 0, result.stderr
        assert all(line.isprintable() for line in result.stdout.splitlines()), result.stdout
    assert "\\x1b[31m" in inspect_result.stdout and "layers.6.bias\\n" in inspect_result.stdout
    assert "\\ud800" in spec_result.stdout


def test_inspect_lists_a_bounded_number_of_tensors(tmp_path):
    result, _ = run_cli("inspect", str(many_tensors(tmp_path, 5000)))
    assert result.returncode == 0, result.stderr
    assert "... and 4000 more tensors (5000 in all; --all lists every one)" in result.stdout
    assert len(result.stdout.splitlines()) == 2 + 1000 + 1


# -- the helpers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, limit, shown",
    [
        ("layers.0.weight", 500, "layers.0.weight"),
        ("a\nb", 500, "a\\nb"),
        ("\x1b[31mred", 500, "\\x1b[31mred"),
        ("\ud800", 500, "\\ud800"),
        ("\u202eevil", 500, "\\u202eevil"),
        ("x" * 12, 5, "xxxxx...(7 more characters)"),
    ],
)
def test_printable(text, limit, shown):
    assert printable(text, limit) == shown


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 65 + "]" * 65, "nested 65 levels deep"),
        ("[" + "9" * 21 + "]", "integer of 21 digits"),
        ('{"a": 1, "a": 2}', "key 'a' appears twice"),
        ("[NaN]", "NaN is not JSON"),
        ("[1,", "not JSON"),
    ],
)
def test_load_json_limits(text, message):
    with pytest.raises(ValueError, match=message):
        load_json(text)


def test_load_json_keeps_brackets_inside_strings():
    assert load_json('{"a": "[[[[{{{{"}', max_depth=1) == {"a": "[[[[{{{{"}


@pytest.mark.parametrize(
    "message, line",
    [
        ("plain failure\nmore", "plain failure"),
        (
            'Traceback (most recent call last):\n  File "../src/ndarray.cc", line 2093\n'
            "MXNetError: Check failed: Invalid NDArray file format\n",
            "MXNetError: Check failed: Invalid NDArray file format",
        ),
        ("", ""),
    ],
)
def test_cause_line_skips_an_embedded_traceback(message, line):
    assert cause_line(message) == line


# -- isolation --------------------------------------------------------------------------------------------
def crash() -> None:
    ctypes.string_at(0)  # a read of address 0: SIGSEGV


def hog() -> bytearray:
    return bytearray(2 * 1024**3)


def hang() -> None:
    time.sleep(60)


def refuse() -> None:
    raise ParamFileError("entry x: refused")


def refuse_naming_the_file() -> None:
    raise ParamFileError("f.bin: entry x: refused")


def fail() -> None:
    raise RuntimeError("Traceback (most recent call last):\n  File x\nRuntimeError: the cause")


@pytest.mark.parametrize(
    "func, message",
    [
        (crash, "f.bin: reader crashed with SIGSEGV"),
        (hog, "f.bin: reader exceeded 256 MB"),
        (hang, "f.bin: reader timed out after 2 s"),
        (refuse, "f.bin: entry x: refused"),  # a refusal from inside names the file
        (refuse_naming_the_file, "f.bin: entry x: refused"),
    ],
)
def test_isolated_failures_become_param_file_errors(func, message):
    with pytest.raises(ParamFileError) as info:
        isolate.run_isolated(func, where="f.bin", limits=Limits(memory_mb=256, timeout_s=2))
    assert str(info.value) == message


def test_isolated_exceptions_keep_type_and_message():
    with pytest.raises(isolate.ReaderError) as info:
        isolate.run_isolated(fail, where="f.bin")
    assert (
        info.value.type_name == "RuntimeError" and cause_line(info.value.message) == "RuntimeError: the cause"
    )


def test_isolated_results_come_back():
    assert isolate.run_isolated(printable, "a\nb", where="f") == "a\\nb"


def test_a_worker_survives_a_crash():
    with isolate.Worker(Limits(timeout_s=5)) as worker:
        assert worker.call(crash).kind == "crash"
        outcome = worker.call(printable, "ok")
    assert (outcome.kind, outcome.value) == ("ok", "ok")


# -- fuzzing -------------------------------------------------------------------------------
def test_a_small_fuzz_campaign_finds_nothing_bad(tmp_path):
    report = fuzz.campaign(200, seed=7, workers=2, limits=Limits(), out=tmp_path / "fuzz")
    counts = {path: dict(report.counts[path]) for path in fuzz.PATHS}
    assert report.bad_count() == 0, (counts, report.reproducer_lines()[:3])
    assert all(sum(report.counts[path].values()) == 200 for path in fuzz.PATHS)
    assert report.counts["inspect"][fuzz.OURS_REJECTS] == 0, report.reproducer_lines()[:3]
    assert report.counts["import"][fuzz.BOTH_ACCEPT] > 0  # the campaign reaches valid files too


def test_mutants_are_reproducible():
    bases = fuzz.valid_files()
    assert fuzz.mutant(bases, 3, 41) == fuzz.mutant(bases, 3, 41)
    assert fuzz.mutant(bases, 3, 41) != fuzz.mutant(bases, 3, 42)
