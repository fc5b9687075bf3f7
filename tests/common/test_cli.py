"""Command-line behaviour: one-line errors and exit code 2 for bad input; test-all's accounting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.commands import testing
from common.commands.cli import main
from common.commands.testing import SuiteResult
from common.config import backend_names
from common.core.models import TIED
from common.core.oracle import initial_weights
from common.core.portable import write_portable
from common.envs import ROOT


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


def test_test_all_reports_every_backend_then_fails(monkeypatch, capsys):
    names = backend_names()

    def fake_backend(name, extra):
        if name == names[1]:
            return SuiteResult(name, {}, 2, 0.0, "environment could not be created")
        return SuiteResult(name, {"passed": 5, "xfailed": 1}, 0, 1.0)

    monkeypatch.setattr(testing, "run_suite", lambda *a: SuiteResult("base (common)", {"passed": 9}, 0, 1.0))
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
