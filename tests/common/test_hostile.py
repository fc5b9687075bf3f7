"""Hostile parameter, spec and record files (issues 10 and 24): each is refused with one escaped
line of at most 500 characters and exit 2, quickly, by the command line and by the library; every
check on untrusted text takes linear time; a small fuzz campaign finds nothing bad; the isolation
of native readers turns crashes, memory hogs and hangs into ParamFileError."""

from __future__ import annotations

import ctypes
import json
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from common.commands import cli, diff, fuzz
from common.core import isolate, portable, safetensors_io
from common.core.isolate import Limits
from common.core.models import TIED, load_spec
from common.core.oracle import initial_weights
from common.core.params import check_value
from common.core.spec import Dense, ModelSpec
from common.core.untrusted import cause_line, json_depth, load_json, printable
from common.envs import ROOT
from common.errors import MAX_LINE, MAX_MESSAGE, ParamFileError, SpecError, one_line
from tests.common.hostile_files import (
    HOSTILE_FILES,
    HOSTILE_RECORDS,
    HOSTILE_SPECS,
    UNCLOSED,
    file_with_escapes_everywhere,
    many_tensors,
    spec_named_with_escapes,
    with_metadata,
)
from tests.helpers import cpu_budget, file_size_limit

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
    assert len(lines) == 2 and lines[1] == "", f"stderr={stderr[:2000]!r}, but should be exactly one line"
    assert lines[0].isprintable(), f"stderr={stderr[:2000]!r}, but should hold no control character"
    assert len(lines[0]) <= MAX_LINE, f"a line of {len(lines[0])} characters, but at most {MAX_LINE}"
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


@pytest.mark.parametrize("kind, in_a_process", cli_cases(HOSTILE_RECORDS, ("nested 100,000 deep", "FIFO")))
def test_cli_diff_from_refuses_hostile_records(tmp_path, capfd, kind, in_a_process):
    """--from reads a record file through the bounded loader: no RecursionError, no FIFO waited on."""
    args = ("diff", "--from", str(HOSTILE_RECORDS[kind](tmp_path)), "--out-dir", str(tmp_path / "out"))
    result, elapsed = run_cli(*args) if in_a_process else run_cli_here(capfd, *args)
    assert result.returncode == 2, f"exit={result.returncode}, but should be 2 [{result.stderr[-500:]!r}]"
    assert_one_clean_line(result.stderr)
    assert elapsed < DEADLINE_S


@pytest.mark.parametrize("kind", sorted(HOSTILE_SPECS))
def test_public_load_spec_refuses_hostile_spec_files(tmp_path, kind):
    """common.core.models.load_spec, the API's reader, is the CLI's: one bounded SpecError line."""
    path = HOSTILE_SPECS[kind](tmp_path)
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    message = str(info.value)
    assert message.isprintable() and len(message) <= MAX_MESSAGE, message[:1000]
    assert time.monotonic() - started < DEADLINE_S


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


# -- linear time: a megabyte of each input in well under a second of CPU --------------------------------
LINEAR_TEXTS = {  # kind -> (1 MB of text, whether load_json refuses it)
    "unclosed string of escaped quotes": (UNCLOSED, True),
    "unclosed string of escaped backslashes": ('"' + "\\\\" * (1 << 19), True),
    "brackets inside a string": ('["' + "[{" * (1 << 19) + '"]', False),
    "nested a million deep": ("[" * (1 << 20) + "]" * (1 << 20), True),
    "a key repeated after 100,000 others": (
        "{" + ",".join(f'"k{i}":0' for i in range(100_000)) + ',"k0":1}',
        True,
    ),
}


@pytest.mark.parametrize("kind", list(LINEAR_TEXTS))
def test_json_checks_take_linear_time(kind):
    """load_json decides each 1 MB text in under 1 s of CPU (the backtracking check took 27 s on
    64 KB of escaped quotes, and about 2 hours on 1 MB)."""
    text, refused = LINEAR_TEXTS[kind]
    with cpu_budget(1.0):
        try:
            load_json(text)
            outcome = False
        except ValueError:
            outcome = True
    assert outcome == refused, f"refused={outcome}, but should be {refused}"


def reference_depth(text: str) -> tuple[int, bool]:
    """Deepest nesting by a character loop: the definition json_depth must meet; and whether the
    text stops being JSON at a backslash outside any string, where the parser stops too."""
    depth = deepest = 0
    inside = escaped = False
    for char in text:
        if inside:
            escaped, inside = (False, inside) if escaped else (char == "\\", char != '"')
        elif char == "\\":
            return deepest, True
        elif char == '"':
            inside = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest, False


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_json_depth_meets_the_character_loop(monkeypatch, chunk):
    """On 3,000 random strings of brackets, quotes, backslashes and multi-byte characters, cut into
    chunks of every size: the same depth, or (past a stray backslash, where JSON ends) no less."""
    monkeypatch.setattr("common.core.untrusted._SCAN_CHUNK", chunk)
    rng = random.Random(24)
    for _ in range(3000):
        text = "".join(rng.choice('[]{}"\\a é\n') for _ in range(rng.randint(0, 40)))
        expected, stray = reference_depth(text)
        depth = json_depth(text)
        assert depth == expected or (stray and depth >= expected), (
            f"json_depth({text!r})={depth}, but should be {expected}"
        )


def unclosed_metadata_file(folder, key: str):
    return with_metadata(folder, key, UNCLOSED)


def big_spec_file(folder):
    """A valid spec whose header budget holds a 1 MB metadata value (2,000 Dense layers)."""
    path = folder / "big.json"
    path.write_text(json.dumps(ModelSpec("big", 1, tuple(Dense(1) for _ in range(2000))).to_dict()))
    return path


LINEAR_COMMANDS = {
    "spec file": (
        lambda folder: ("spec", str(HOSTILE_SPECS["a 1 MB string of escaped quotes, unclosed"](folder))),
        2,
    ),
    "--from record": (
        lambda folder: (
            "diff",
            "--from",
            str(HOSTILE_RECORDS["a 1 MB string of escaped quotes, unclosed"](folder)),
        ),
        2,
    ),
    "metadata value, inspect": (lambda folder: ("inspect", str(unclosed_metadata_file(folder, "note"))), 0),
    "metadata spec, inspect --spec": (
        lambda folder: (
            "inspect",
            str(unclosed_metadata_file(folder, "spec")),
            "--spec",
            str(big_spec_file(folder)),
        ),
        2,
    ),
}


@pytest.mark.parametrize("kind", list(LINEAR_COMMANDS))
def test_a_megabyte_unclosed_string_costs_under_a_second(tmp_path, capfd, kind):
    """A 1 MB string of escaped quotes that never closes, in a spec file, a --from record or a
    metadata value: refused in one line with exit 2 (plain inspect shows it, exit 0), in under
    1 s of CPU."""
    make_args, status = LINEAR_COMMANDS[kind]
    args = make_args(tmp_path)
    cli.build_parser()  # imports every command's module: not what is timed
    with cpu_budget(1.0):
        result, _ = run_cli_here(capfd, *args)
    assert result.returncode == status, (
        f"exit={result.returncode}, but should be {status} [{result.stderr[-500:]!r}]"
    )
    if status:
        assert_one_clean_line(result.stderr)


# -- bounded messages -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["plain", "x" * 10_000_000, "a\nb" * 300, "\x1b[2J" + "y" * 600 + "\ud800", "\\" * 1000, "é" * 2000],
    ids=["short", "10 MB", "newlines", "escapes at both ends", "backslashes", "non-ASCII"],
)
def test_one_line_is_bounded_keeps_both_ends_and_is_idempotent(text):
    line = one_line(text, 100)
    assert line.isprintable() and len(line) <= 100, line
    assert one_line(line, 100) == line
    if len(text) <= 100 and text.isprintable():
        assert line == text
    else:
        escaped = repr(text)[1:-1] if not text.isprintable() else text
        head, _, tail = line.partition(" ...(")
        assert escaped.startswith(head) and escaped.endswith(tail.partition(")... ")[2])


def test_a_saved_failure_prints_as_one_bounded_line():
    """diff --from prints a failed backend's cause from the record file: input, so bounded too."""
    (line,) = diff.failed_lines({"failed": {"torch": "Traceback\n" + "x" * 10_000_000 + "\nthe cause"}})
    assert line.isprintable() and len(line) <= MAX_LINE and line.endswith("the cause"), line[:600]


def test_errors_are_capped_where_they_are_made():
    message = str(SpecError(f"spec {'n' * 10_000_000}: has no layers"))
    assert (
        len(message) <= MAX_MESSAGE and message.startswith("spec nnn") and message.endswith(": has no layers")
    )
    assert "characters elided" in message


# -- values: checked after the float32 cast ---------------------------------------------------------------
@pytest.mark.parametrize(
    "value, refused",
    [(1e300, True), (-3.5e38, True), (float("nan"), True), (3.0e38, False), (2**62, False)],
    ids=["1e300", "-3.5e38", "nan", "3e38 fits", "int 2**62"],
)
def test_check_value_checks_finiteness_after_the_cast(value, refused):
    array = np.full((8, 4), value)
    if refused:
        with pytest.raises(ParamFileError, match="layers.0.weight: holds NaN or Inf values"):
            check_value(TIED, "layers.0.weight", array)
        assert np.isinf(check_value(TIED, "layers.0.weight", array, allow_nonfinite=True)).all() or np.isnan(
            value
        )
    else:
        assert np.isfinite(check_value(TIED, "layers.0.weight", array)).all()


# -- atomic writes -------------------------------------------------------------------------------------------
def test_a_write_that_fails_midway_leaves_the_old_file_intact(tmp_path):
    """write_portable over a good file, with writes failing past half its size (EFBIG, as on a full
    disk): the error is raised, the good file is intact, and no temporary file is left."""
    path = tmp_path / "params.safetensors"
    portable.write_portable(path, TIED, initial_weights(TIED, seed=1))
    good = path.read_bytes()
    with file_size_limit(len(good) // 2), pytest.raises(OSError):
        portable.write_portable(path, TIED, initial_weights(TIED, seed=2))
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    portable.write_portable(path, TIED, initial_weights(TIED, seed=2))  # and then it works
    assert path.read_bytes() != good and safetensors_io.read(path)[0]


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
