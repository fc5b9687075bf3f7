"""Command-line behaviour: one-line errors and exit code 2 for bad input; test-all's accounting."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from common.commands import testing
from common.commands.cli import main
from common.commands.testing import SuiteResult
from common.config import backend_names, canonical_backend
from common.core.models import TIED
from common.core.oracle import initial_weights
from common.core.portable import write_portable
from common.envs import ROOT
from common.errors import UsageError
from tests.common.processes import gone


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "common.commands.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("spec", "nope"), "unknown model 'nope'"),
        (("inspect", "/nonexistent.safetensors"), "cannot read"),
        (("diff", "--backends", "caffe"), "unknown backend 'caffe'"),
        (("train", "--steps", "0", "--backends", "torch"), "--steps=0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_unset_or_unknown_backend_for_make_test(monkeypatch):
    monkeypatch.delenv("PARITY_BACKEND", raising=False)
    assert main(["test"]) == 2
    monkeypatch.setenv("PARITY_BACKEND", "theano")
    assert main(["test"]) == 2


def test_bad_spec_file_exit_2(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{"in_features": 4, "layers": [{"kind": "dense", "units": 0}]}')
    result = run_cli("spec", str(path))
    assert result.returncode == 2 and "units=0, but should be a positive int" in result.stderr


def test_inspect_checks_a_file_against_a_spec(tmp_path):
    path = write_portable(tmp_path / "t.safetensors", TIED, initial_weights(TIED))
    assert run_cli("inspect", str(path), "--spec", "tied").returncode == 0
    mismatch = run_cli("inspect", str(path), "--spec", "mlp")
    assert mismatch.returncode == 2 and "spec mismatch" in mismatch.stderr


def test_help_lists_every_command():
    result = run_cli("--help")
    for command in ("test", "test-all", "diff", "train", "roundtrip", "spec", "inspect"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "result, ok",
    [
        (SuiteResult("torch", {"passed": 3}, 0, 1.0), True),
        (SuiteResult("torch", {"passed": 3, "failed": 1}, 1, 1.0), False),
        (SuiteResult("torch", {"passed": 0}, 5, 1.0, "no test ran"), False),
        (SuiteResult("torch", {}, 2, 0.0, "environment could not be created"), False),
    ],
)
def test_a_backend_that_cannot_run_is_a_failure(result, ok):
    assert result.ok is ok


@pytest.fixture
def seconds_record(monkeypatch, tmp_path):
    """test-all's record of suite times, away from the real one."""
    record = tmp_path / "test-all-seconds.json"
    monkeypatch.setattr(testing, "SECONDS_RECORD", record)
    monkeypatch.setattr(testing, "REPORTS", tmp_path / "reports")  # and its summary record
    return record


def test_suites_start_longest_first_and_untimed_ones_before_all(seconds_record):
    seconds_record.write_text('{"torch": 10, "base (common)": 50, "mxnet": 30, "gone": 99}')
    names = ["base (common)", "torch", "mxnet", "jax", "nnx"]
    assert testing.longest_first(names) == ["jax", "nnx", "base (common)", "mxnet", "torch"]


@pytest.mark.parametrize("text", [None, "", "not json", "[1, 2]", '{"torch": "slow"}'])
def test_without_a_usable_record_suites_keep_their_order(seconds_record, text):
    if text is not None:
        seconds_record.write_text(text)
    names = ["base (common)", "torch", "mxnet"]
    assert testing.longest_first(names) == names


def test_the_record_keeps_other_suites_and_forgets_unfinished_ones(seconds_record):
    seconds_record.write_text('{"keras2": 38.0, "torch": 13.0, "jax": 52.0}')
    testing.record_seconds(
        [
            SuiteResult("torch", {"passed": 1}, 0, 20.04),
            SuiteResult("jax", {}, -9, 600.0, "timed out after 600s"),
        ]
    )
    assert json.loads(seconds_record.read_text()) == {"keras2": 38.0, "torch": 20.0}


def test_suites_run_while_the_environments_are_built(monkeypatch, capsys, seconds_record):
    """The base suite needs no backend env: it runs, and ends, while they are still being built."""
    names = backend_names()
    base_ran = threading.Event()

    def slow_env(env, **kwargs):
        assert base_ran.wait(10), "the base suite waited for the backend environments"
        return ROOT / ".venvs" / env / "bin" / "python"

    def base_suite(name, *args, **kwargs):
        base_ran.set()
        return SuiteResult(name, {"passed": 1}, 0, 0.1)

    def backend_suite(name, extra, timeout, env_ready, cache_root=None):
        env_ready.result()  # the env's own failure, the assertion above included, surfaces here
        return SuiteResult(name, {"passed": 1}, 0, 0.1)

    monkeypatch.setattr(testing, "ensure_venv", slow_env)
    monkeypatch.setattr(testing, "run_suite", base_suite)
    monkeypatch.setattr(testing, "run_backend", backend_suite)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # one worker: the base suite must not wait
    assert testing.test_all(names[:2], []) == 0


def test_a_suite_whose_env_is_ready_runs_before_one_still_waiting(monkeypatch, capsys, seconds_record):
    """One core: the second suite's env is slow, so the third (its env already built) runs first."""
    by_env: dict[str, list[str]] = {}
    for name in backend_names():
        by_env.setdefault(testing.backend_env(name), []).append(name)
    shared = next(names for names in by_env.values() if len(names) > 1)
    other = next(names[0] for names in by_env.values() if names is not shared)
    first, later = shared[:2]
    ran: list[str] = []

    def ensure_venv(env, **kwargs):
        if env == testing.backend_env(other):
            deadline = time.monotonic() + 10
            while later not in ran:
                assert time.monotonic() < deadline, f"{later} waited behind {other}'s environment"
                time.sleep(0.01)
        return Path(sys.executable)

    def backend_suite(name, extra, timeout, env_ready, cache_root=None):
        env_ready.result()
        ran.append(name)
        return SuiteResult(name, {"passed": 1}, 0, 0.1)

    monkeypatch.setattr(testing, "ensure_venv", ensure_venv)
    monkeypatch.setattr(testing, "run_suite", lambda name, *a, **k: SuiteResult(name, {"passed": 1}, 0, 0.1))
    monkeypatch.setattr(testing, "run_backend", backend_suite)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert testing.test_all((first, other, later), []) == 0
    assert ran == [first, later, other]


def test_a_failed_environment_fails_its_suites_and_no_other(monkeypatch, capsys, seconds_record):
    names = backend_names()
    broken = testing.backend_env(names[0])

    def ensure_venv(env, **kwargs):
        if env == broken:
            raise UsageError(f"cannot create .venvs/{env}: uv failed")
        return Path(sys.executable)

    monkeypatch.setattr(testing, "ensure_venv", ensure_venv)
    monkeypatch.setattr(testing, "run_suite", lambda name, *a, **k: SuiteResult(name, {"passed": 1}, 0, 0.1))
    assert testing.test_all(names, []) == 1
    out = capsys.readouterr().out
    failed = {line[1:].split()[0] for line in out.splitlines() if line.startswith("!")}
    assert failed == {b for b in names if testing.backend_env(b) == broken}
    assert "environment: cannot create" in out


def test_test_all_reports_every_backend_then_fails(monkeypatch, capsys, seconds_record):
    names = backend_names()

    def fake_backend(name, extra, timeout, env_ready=None, cache_root=None):
        if name == names[1]:
            return SuiteResult(name, {}, 2, 0.0, "environment could not be created")
        return SuiteResult(name, {"passed": 5, "xfailed": 1}, 0, 1.0)

    monkeypatch.setattr(
        testing, "run_suite", lambda *a, **k: SuiteResult("base (common)", {"passed": 9}, 0, 1.0)
    )
    monkeypatch.setattr(testing, "ensure_venv", lambda *a, **k: None)
    monkeypatch.setattr(testing, "run_backend", fake_backend)
    assert testing.test_all(names, []) == 1
    out = capsys.readouterr().out
    rows = {line[1:].split()[0] for line in out.splitlines() if line[:1] in (" ", "!") and line[1:].strip()}
    assert set(names) <= rows
    assert "FAILED: environment could not be created" in out and f"FAILED: {names[1]}" in out


def test_run_suite_counts_outcomes(tmp_path):
    suite = tmp_path / "test_tiny.py"
    suite.write_text(
        "import pytest\n"
        "def test_a(): pass\n"
        "def test_b(): assert 0\n"
        "@pytest.mark.xfail(strict=True)\n"
        "def test_c(): assert 0\n"
    )
    result = testing.run_suite("tiny", sys.executable, str(suite), ["-p", "tests.conftest"], None)
    assert (result.counts["passed"], result.counts["failed"], result.counts["xfailed"]) == (1, 1, 1)
    assert not result.ok


def test_a_hanging_suite_is_reported_as_timed_out_while_the_others_finish(
    monkeypatch, capsys, tmp_path, seconds_record
):
    """A suite that never ends is killed at the timeout, its whole tree with it; every other suite
    still reports. Only the hanging suite is a real pytest, so no bound depends on how fast a
    loaded machine starts one: its sleep (600 s) is what the timeout must cut short."""
    names = backend_names()
    hang = tmp_path / "test_hang.py"
    hang.write_text("import time\ndef test_hang(): time.sleep(600)\n")
    mark = uuid.uuid4().hex
    monkeypatch.setenv("PARITY_MARK", mark)
    real_run_suite = testing.run_suite

    def fake_backend(name, extra, timeout, env_ready=None, cache_root=None):
        if name != names[0]:
            return SuiteResult(name, {"passed": 1}, 0, 0.1)
        return real_run_suite(name, sys.executable, str(hang), ["-p", "tests.conftest"], None,
                              timeout=timeout, capture=True)  # fmt: skip

    monkeypatch.setattr(testing, "run_backend", fake_backend)
    monkeypatch.setattr(testing, "ensure_venv", lambda *a, **k: None)
    monkeypatch.setattr(testing, "run_suite", lambda name, *a, **k: SuiteResult(name, {"passed": 1}, 0, 0.1))
    started = time.monotonic()
    assert testing.test_all(names[:3], [], timeout=2) == 1
    assert time.monotonic() - started < 300, "the hanging suite ran on past its timeout"
    out = capsys.readouterr().out
    assert f"{names[0]}: FAILED (timed out after 2s)" in out
    assert all(f"==> {name}: ok" in out for name in names[1:3])
    assert not gone(mark), "the timed-out suite left a process"


def test_fuzz_refuses_a_bad_count_in_one_line():
    result = run_cli("fuzz", "--mutants", "0")
    assert result.returncode == 2 and "--mutants=0" in result.stderr and result.stderr.count("\n") == 1


def test_inspect_escapes_a_hostile_path(tmp_path):
    path = tmp_path / "evil\n\x1b[31m.safetensors"
    path.write_bytes(b"not a parameter file")
    result = run_cli("inspect", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "\x1b" not in result.stderr and "evil\\n\\x1b[31m.safetensors" in result.stderr


def test_run_parallel_runs_at_most_at_once_children_together(tmp_path):
    """``make bench`` runs one backend at a time: children never overlap, and all report. Without
    a limit they run together: each waits until all three have started, which only children
    running at once can do (no bound on a loaded machine's speed)."""
    from common.commands.fanout import run_parallel

    span = (
        "import json, sys, time; start = time.time(); "
        "json.dump({'ok': True, 'span': [start, time.time()]}, open(sys.argv[1], 'w'))"
    )
    names = ("a", "b", "c")
    records = run_parallel(
        names, lambda backend, out: [sys.executable, "-c", span, str(out)], stream=io.StringIO(), at_once=1
    )
    spans = sorted(records[name]["span"] for name in names)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), spans
    meet = (
        "import json, pathlib, sys, time; here = pathlib.Path(sys.argv[2]); (here / sys.argv[3]).touch(); "
        "deadline = time.monotonic() + 600\n"
        "while len(list(here.iterdir())) < 3 and time.monotonic() < deadline: time.sleep(0.01)\n"
        "json.dump({'ok': len(list(here.iterdir())) == 3}, open(sys.argv[1], 'w'))"
    )
    command = lambda backend, out: [sys.executable, "-c", meet, str(out), str(tmp_path), backend]  # noqa: E731
    records = run_parallel(names, command, stream=io.StringIO())
    assert all(records[name] == {"ok": True} for name in names), records


@pytest.mark.parametrize("enabled", [True, False])
def test_bench_times_with_the_garbage_collector_off_and_restores_it(enabled):
    import gc

    from common.commands import bench

    seen = []
    (gc.enable if enabled else gc.disable)()
    try:
        assert bench.timed(lambda: seen.append(gc.isenabled())) >= 0
        assert seen == [False], "a collection could land inside a timed run"
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


# -- test-all's results, for people and for CI ----------------------------------------------------
def _fake_suites(monkeypatch, reasons_of):
    """test-all over fake suites, each backend's with the skip and xfail reasons ``reasons_of(name)``;
    returns the extra pytest arguments each suite was given."""
    calls: list[list[str]] = []

    def fake_backend(name, extra, timeout, env_ready=None, cache_root=None):
        calls.append(extra)
        return SuiteResult(name, {"passed": 2, "skipped": 1}, 0, 0.1, reasons=reasons_of(name))

    def fake_base(name, python, suite, extra, backend, **kwargs):
        calls.append(extra)
        return SuiteResult(name, {"passed": 3}, 0, 0.1)

    monkeypatch.setattr(testing, "run_backend", fake_backend)
    monkeypatch.setattr(testing, "run_suite", fake_base)
    monkeypatch.setattr(testing, "ensure_venv", lambda *a, **k: None)
    return calls


def test_every_skip_and_xfail_reason_is_listed_once_with_its_suites(monkeypatch, capsys, seconds_record):
    names = backend_names()[:3]
    shared, own = "no CUDA device here", "only in the first"
    calls = _fake_suites(
        monkeypatch,
        lambda name: {"skipped": {shared: 1, **({own: 2} if name == names[0] else {})}, "xfailed": {}},
    )
    assert testing.test_all(names, []) == 0
    out = capsys.readouterr().out
    assert out.count(shared) == 1 and out.count(own) == 1
    assert f"in: {', '.join(names)}" in out and f"in: {names[0]} (2)" in out
    assert len(calls) == len(names) + 1


def test_junitxml_names_a_folder_with_one_file_per_suite(monkeypatch, capsys, seconds_record, tmp_path):
    names = backend_names()[:2]
    calls = _fake_suites(monkeypatch, lambda name: {})
    folder = tmp_path / "junit"
    assert testing.test_all(names, ["-q", "--junitxml", str(folder)]) == 0
    files = sorted(arg.split("=", 1)[1] for extra in calls for arg in extra if arg.startswith("--junitxml="))
    assert files == sorted(str(folder / f"{name}.xml") for name in ("base", *names))
    assert all("-q" in extra for extra in calls)


def test_junitxml_refuses_a_file_and_a_missing_folder(tmp_path):
    existing = tmp_path / "report.xml"
    existing.write_text("")
    with pytest.raises(UsageError, match="is a file; test-all writes one JUnit file per suite"):
        testing.split_junit([f"--junitxml={existing}"])
    with pytest.raises(UsageError, match="--junitxml needs a folder"):
        testing.split_junit(["--junitxml"])
    assert testing.split_junit(["-k", "ties"]) == (["-k", "ties"], None)


def test_the_summary_record_holds_every_suite(monkeypatch, capsys, seconds_record):
    names = backend_names()[:2]
    _fake_suites(monkeypatch, lambda name: {"skipped": {"why": 1}})
    assert testing.test_all(names, []) == 0
    record = json.loads((testing.REPORTS / testing.TEST_RECORD).read_text())
    assert record["ok"] is True
    assert [s["name"] for s in record["suites"]] == ["base (common)", *names]
    assert record["suites"][1]["reasons"] == {"skipped": {"why": 1}}


def test_the_status_line_names_the_running_suites(tmp_path):
    with open(tmp_path / "log", "w+") as log:
        status = testing.StatusLine(log, every=0.0)
        status.update({"torch": time.monotonic() - 5}, 1, 3)
        log.seek(0)
        assert re.match(r"\.\.\. 1/3 suites done; running: torch [5-9]s", log.read())


def test_reasons_are_read_from_a_real_pytest_run(tmp_path):
    suite = tmp_path / "test_reasons.py"
    suite.write_text(
        "import pytest\n"
        "def test_a(): pytest.skip('no widget here')\n"
        "@pytest.mark.xfail(strict=True, reason='widgets differ')\n"
        "def test_b(): assert 0\n"
    )
    result = testing.run_suite("tiny", sys.executable, str(suite), ["-p", "tests.conftest"], None)
    assert result.reasons == {"skipped": {"no widget here": 1}, "xfailed": {"widgets differ": 1}}


@pytest.mark.parametrize(
    ("typo", "suggestion"), [("torh", "torch"), ("tensorflw", "tensorflow"), ("kears2", "keras2")]
)
def test_a_typo_gets_the_closest_name(typo, suggestion):
    result = subprocess.run(
        [sys.executable, "-m", "common", "test", typo], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert f"(did you mean {suggestion!r}?)" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_name_far_from_any_gets_no_suggestion():
    with pytest.raises(UsageError) as error:
        canonical_backend("zzzzzz")
    assert "did you mean" not in str(error.value)


def test_version_is_the_project_version():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run(
        [sys.executable, "-m", "common", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"paramparity {version}")


def test_make_clean_removes_every_cache_and_build_folder():
    """What tools leave in the checkout: make clean's recipe names each one."""
    recipe = (ROOT / "Makefile").read_text().split("\nclean:", 1)[1].split("\n\n", 1)[0]
    for leftover in (
        "reports",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        "build",
        "*.egg-info",
        ".jax-cache",
        ".mlx-cache",
    ):
        assert leftover in recipe, f"make clean leaves {leftover}"


@pytest.mark.parametrize(
    ("extra", "suite_given"),
    [
        ([], True),
        (["-k", "ties"], True),
        (["tests/conformance/test_ties.py", "-q"], False),
        (["tests/conformance/test_ties.py::test_same_values_at_both_positions"], False),
    ],
)
def test_make_test_narrows_to_the_test_paths_it_is_given(monkeypatch, extra, suite_given):
    """`make test ARGS="tests/conformance/test_ties.py"` runs that file, not the whole suite beside it."""
    started: list[list[str]] = []

    class Recorded:
        def __init__(self, argv, **kwargs):
            started.append(argv)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def wait(self):
            return 0

    monkeypatch.setattr(testing, "ensure_backend_env", lambda backend: Path(sys.executable))
    monkeypatch.setattr(testing.children, "Child", Recorded)
    assert testing.test_one(extra, backend_names()[0]) == 0
    assert ("tests/conformance" in started[0]) is suite_given
    assert started[0][len(started[0]) - len(extra) :] == extra  # pytest's own arguments, last and whole
