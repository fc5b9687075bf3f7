"""`make test` and `make test-all`: each suite runs in its own environment, as a subprocess.

test-all keeps going when a backend fails, and counts a backend that cannot run (its env cannot
be created, its framework does not import, no test ran) as a failure, never as a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from common.commands.textable import format_table
from common.config import ENV_VAR, selected_backend
from common.envs import ROOT, backend_env, ensure_backend_env
from common.errors import UsageError

COUNT_COLUMNS = ("passed", "failed", "error", "xfailed", "xpassed", "skipped")


@dataclass
class SuiteResult:
    name: str
    counts: dict[str, int]
    exitstatus: int
    seconds: float
    problem: str = ""

    @property
    def ok(self) -> bool:
        return (
            not self.problem
            and self.exitstatus == 0
            and self.counts.get("passed", 0) > 0
            and not self.counts.get("failed")
            and not self.counts.get("error")
        )


def pytest_command(python: str, suite: str, extra: list[str]) -> list[str]:
    return [python, "-m", "pytest", suite, *extra]  # default verbosity: keeps the backend header


def run_suite(name: str, python: str, suite: str, extra: list[str], backend: str | None) -> SuiteResult:
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    if backend:
        env[ENV_VAR] = backend
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        summary_path = os.path.join(scratch, "summary.json")
        env["PARITY_SUMMARY_FILE"] = summary_path
        status = subprocess.run(pytest_command(python, suite, extra), cwd=ROOT, env=env).returncode
        seconds = time.monotonic() - started
        if not os.path.exists(summary_path):
            return SuiteResult(name, {}, status, seconds, f"pytest exited {status} before reporting")
        with open(summary_path) as handle:
            counts = json.load(handle)
    counts.pop("exitstatus", None)
    problem = "no test ran" if status == 5 or not counts.get("passed") else ""
    return SuiteResult(name, counts, status, seconds, problem)


def run_backend(backend: str, extra: list[str]) -> SuiteResult:
    print(f"\n==> {backend}: conformance suite in .venvs/{backend_env(backend)}", flush=True)
    try:
        python = ensure_backend_env(backend)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return SuiteResult(backend, {}, 2, 0.0, "environment could not be created")
    return run_suite(backend, str(python), "tests/conformance", extra, backend)


def summary_table(results: list[SuiteResult]) -> str:
    rows, marks = [], []
    for result in results:
        counts = [result.counts.get(column, "-") if result.counts else "-" for column in COUNT_COLUMNS]
        status = "ok" if result.ok else f"FAILED{': ' + result.problem if result.problem else ''}"
        rows.append([result.name, *counts, f"{result.seconds:.0f}s", status])
        marks.append("" if result.ok else "!")
    return format_table(["suite", *COUNT_COLUMNS, "time", "status"], rows, marks)


def test_one(extra: list[str]) -> int:
    backend = selected_backend()
    python = ensure_backend_env(backend)
    env = dict(os.environ, **{ENV_VAR: backend})
    return subprocess.run(
        pytest_command(str(python), "tests/conformance", extra), cwd=ROOT, env=env
    ).returncode


def test_all(backends: tuple[str, ...], extra: list[str]) -> int:
    print("==> base: common/'s own tests in .venvs/base", flush=True)
    results = [run_suite("base (common)", sys.executable, "tests/common", extra, None)]
    results += [run_backend(backend, extra) for backend in backends]
    print("\n== paramparity test-all summary")
    print(summary_table(results))
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print(f"\nall {len(results)} suites passed")
    return 0


__all__ = ["test_all", "test_one"]
