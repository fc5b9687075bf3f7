"""`make test` and `make test-all`: each suite runs in its own environment, as a subprocess.

test-all runs the suites concurrently (one per core), prints each suite's output whole when it
ends, keeps going when a backend fails, and counts a backend that cannot run (its env cannot be
created, its framework does not import, no test ran, it timed out) as a failure, never a skip.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import children
from common.commands.fanout import child_environment, shown, writable_folder, write_atomically
from common.commands.textable import format_table
from common.config import DEFAULT_TIMEOUT, ENV_VAR, selected_backend, selected_device
from common.envs import REPORTS, ROOT, backend_env, ensure_backend_env, ensure_venv
from common.errors import UsageError

COUNT_COLUMNS = ("passed", "failed", "error", "xfailed", "xpassed", "skipped")
OUTPUT_LIMIT = 256_000  # bytes of a suite's output kept for the log
BASE_SUITE = "base (common)"  # common/'s own tests, in the base env
CACHE_ROOT = ROOT / ".pytest_cache"  # pytest's caches (one per suite) and test-all's record
SECONDS_FILE = "test-all-seconds.json"
SECONDS_RECORD = CACHE_ROOT / SECONDS_FILE  # each suite's last wall time
TEST_RECORD = "test-all.json"  # in reports/: the machine-readable summary


@dataclass
class SuiteResult:
    name: str
    counts: dict[str, int]
    exitstatus: int
    seconds: float
    problem: str = ""
    output: str = ""
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # outcome -> reason -> count

    @property
    def ok(self) -> bool:
        return (
            not self.problem
            and self.exitstatus == 0
            and self.counts.get("passed", 0) > 0
            and not self.counts.get("failed")
            and not self.counts.get("error")
        )


SUITE = "tests/conformance"


def pytest_command(
    python: str, suite: str | None, extra: list[str], cache: str = "base", cache_root: Path | None = None
) -> list[str]:
    """Default verbosity keeps the backend header. Each suite keeps its own pytest cache, so
    --lf and --ff of one backend are not confused by another's run of the same test ids. ``suite``
    None: the test paths in ``extra`` say what runs."""
    cache_dir = f"{cache_root}/{cache}" if cache_root else f".pytest_cache/{cache}"
    return [python, "-m", "pytest", *([suite] if suite else []), "-o", f"cache_dir={cache_dir}", *extra]


def run_suite(
    name: str,
    python: str,
    suite: str,
    extra: list[str],
    backend: str | None,
    *,
    timeout: float | None = None,
    capture: bool = False,
    cache_root: Path | None = None,
) -> SuiteResult:
    """One pytest run under a guard (``common.children``). With ``capture`` its output is kept and
    returned in ``output`` so parallel suites print whole; past ``timeout`` its tree is killed and
    the suite counts as failed, with the cause."""
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    if backend:
        env[ENV_VAR] = backend
    started = time.monotonic()
    with children.temporary_directory() as scratch:
        summary_path = os.path.join(scratch, "summary.json")
        log_path = os.path.join(scratch, "output.txt")
        env["PARITY_SUMMARY_FILE"] = summary_path
        with open(log_path, "w") as log:
            sink = log if capture else None
            process = children.Child(
                pytest_command(python, suite, extra, backend or "base", cache_root),
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT if capture else None,
            )  # its own tree: a timeout or an interrupt ends pytest and everything it started
            try:
                status = process.wait(timeout=timeout)
                problem = ""
            except subprocess.TimeoutExpired:
                process.stop(signal.SIGKILL)
                status = process.wait()
                problem = f"timed out after {timeout:g}s"
            except BaseException:
                process.stop()
                process.wait()
                raise
        seconds = time.monotonic() - started
        output = tail_text(log_path) if capture else ""
        try:
            with open(summary_path) as handle:
                counts = json.load(handle) if not problem else None
        except (OSError, ValueError):  # none, or half of one: pytest died while writing it
            counts = None
        if not isinstance(counts, dict):
            problem = problem or f"pytest exited {status} before reporting"
            return SuiteResult(name, {}, status, seconds, problem, output)
    counts.pop("exitstatus", None)
    reasons = counts.pop("reasons", {})
    problem = "no test ran" if status == 5 or not counts.get("passed") else ""
    return SuiteResult(
        name, counts, status, seconds, problem, output, reasons if isinstance(reasons, dict) else {}
    )


def tail_text(path: str, limit: int = OUTPUT_LIMIT) -> str:
    """A suite's output, its last ``limit`` bytes at most: a runaway suite cannot flood the log."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        text = handle.read().decode("utf-8", "replace")
    return text if size <= limit else f"[... {size - limit} bytes cut ...]\n{text}"


def run_backend(
    backend: str,
    extra: list[str],
    timeout: float | None = None,
    env_ready: Future[Path] | None = None,
    cache_root: Path | None = None,
) -> SuiteResult:
    """One backend's suite in its env. ``env_ready``: the env's interpreter, being built elsewhere
    (test-all builds every env in one thread, as make and pip are not parallel-safe); without it,
    the env is built here."""
    try:
        interpreter = env_ready.result() if env_ready else ensure_backend_env(backend, quiet=True)
    except UsageError as error:
        return SuiteResult(backend, {}, 2, 0.0, f"environment: {error}")
    return run_suite(
        backend, str(interpreter), SUITE, extra, backend, timeout=timeout, capture=True, cache_root=cache_root
    )


def build_envs_in_order(envs: list[str]) -> dict[str, Future[Path]]:
    """Build the envs one after another in a thread of their own, each a future the suites that
    need it wait on: a suite starts as soon as its env is ready, not when all of them are."""
    built: dict[str, Future[Path]] = {env: Future() for env in envs}

    def build() -> None:
        for env, future in built.items():
            try:
                future.set_result(ensure_venv(env))  # its progress lines show: a cold env takes a minute
            except UsageError as error:
                if not children.interrupted():
                    print(f"[{env}] {error}", file=sys.stderr, flush=True)
                future.set_exception(error)
            except BaseException as error:  # a bug: raised in the suite's thread, never a hang
                future.set_exception(error)

    threading.Thread(target=build, name="build-envs", daemon=True).start()
    return built


def summary_table(results: list[SuiteResult]) -> str:
    rows, marks = [], []
    for result in results:
        counts = [result.counts.get(column, "-") if result.counts else "-" for column in COUNT_COLUMNS]
        status = "ok" if result.ok else f"FAILED{': ' + result.problem if result.problem else ''}"
        rows.append([result.name, *counts, f"{result.seconds:.0f}s", status])
        marks.append("" if result.ok else "!")
    return format_table(["suite", *COUNT_COLUMNS, "time", "status"], rows, marks)


def reasons_summary(results: list[SuiteResult]) -> str:
    """Every skip and xfail reason once, with the suites it came from and how many tests:
    what -rsx would print, merged across suites."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for result in results:
        for outcome, by_reason in result.reasons.items():
            for reason, count in by_reason.items():
                grouped.setdefault((outcome, reason), []).append(
                    f"{result.name} ({count})" if count > 1 else result.name
                )
    lines = []
    for outcome in ("skipped", "xfailed"):
        entries = sorted((reason, suites) for (kind, reason), suites in grouped.items() if kind == outcome)
        if entries:
            lines.append(f"{outcome}, by reason:")
            lines += [f"  - {reason}\n    in: {', '.join(suites)}" for reason, suites in entries]
    return "\n".join(lines)


JUNIT_OPTIONS = ("--junitxml", "--junit-xml")


def split_junit(extra: list[str]) -> tuple[list[str], Path | None]:
    """pytest's --junitxml=PATH, taken as a folder for test-all: every suite writes its own
    PATH/<suite>.xml (pytest's one file would be overwritten by each suite in turn)."""
    rest, folder, arguments = [], None, iter(extra)
    for argument in arguments:
        name, equals, value = argument.partition("=")
        if name in JUNIT_OPTIONS:
            value = value if equals else next(arguments, "")
            if not value:
                raise UsageError(f"{name} needs a folder: test-all writes one JUnit file per suite there")
            folder = Path(value)
        else:
            rest.append(argument)
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise UsageError(
                f"--junitxml={shown(str(folder))} is a file; test-all writes one JUnit file per suite, so "
                "give it a folder"
            )
        writable_folder(folder, "--junitxml")
    return rest, folder


def junit_file(folder: Path, suite: str) -> str:
    """The suite's JUnit file in ``folder``: ``base.xml``, ``torch.xml``..."""
    return str(folder / f"{suite.split()[0]}.xml")


def write_record(results: list[SuiteResult], wall: float, path: Path) -> None:
    """test-all's machine-readable summary: every suite's counts, reasons, time and verdict."""
    record: dict[str, Any] = {
        "ok": all(r.ok for r in results),
        "wall_seconds": round(wall, 1),
        "suites": [
            {
                **{k: v for k, v in asdict(r).items() if k != "output"},
                "ok": r.ok,
                "seconds": round(r.seconds, 1),
            }
            for r in results
        ],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(record, indent=1) + "\n")
    except OSError as error:  # the printed summary stands without it
        print(f"paramparity: warning: cannot write {shown(str(path))}: {error.strerror}")


class StatusLine:
    """One line saying which suites are running, and for how long: rewritten in place on a
    terminal; elsewhere (a CI log) printed at most once a minute, so a long suite is not silence."""

    def __init__(self, stream=None, every: float = 60.0) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.every, self.last, self.shown = every, time.monotonic(), False

    def update(self, running: dict[str, float], done: int, total: int) -> None:
        now = time.monotonic()
        names = ", ".join(f"{name} {now - since:.0f}s" for name, since in running.items())
        text = f"... {done}/{total} suites done; running: {names or 'none'}"
        if self.live:
            self.stream.write("\r\033[K" + text[: shutil.get_terminal_size().columns - 1])
            self.stream.flush()
            self.shown = True
        elif now - self.last >= self.every:
            print(text, file=self.stream, flush=True)
            self.last = now

    def clear(self) -> None:
        if self.live and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def recorded_seconds(record: Path) -> dict[str, float]:
    try:
        last = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(last, dict):
        return {}
    return {name: float(value) for name, value in last.items() if isinstance(value, (int, float))}


def longest_first(names: list[str], record: Path | None = None) -> list[str]:
    """The order to start suites in: the longest of the last run first, so no long suite starts
    last while the other cores sit idle. Suites without a time keep their order, ahead of the
    timed ones (a new suite may be long), and so does every suite when there is no record."""
    last = recorded_seconds(record or SECONDS_RECORD)

    def seconds(name: str) -> float:
        return last.get(name, float("inf"))

    return sorted(names, key=seconds, reverse=True)  # sorted() is stable: ties keep their order


def record_seconds(results: list[SuiteResult], record: Path | None = None) -> None:
    """Keep each suite's wall time for the next run's order (suites not run keep theirs); a
    suite that did not finish loses its time, so it starts first next time."""
    record = record or SECONDS_RECORD
    times = recorded_seconds(record)
    for result in results:
        times.pop(result.name, None)
        if not result.problem:
            times[result.name] = round(result.seconds, 1)
    try:
        write_atomically(record, json.dumps(times, indent=1) + "\n")
    except OSError as error:  # a cache: the run's verdict stands without it
        print(f"paramparity: warning: cannot keep the suite times in {shown(record)}: {error.strerror}")


def test_one(extra: list[str], backend: str | None = None) -> int:
    backend = backend or selected_backend()
    selected_device()  # a bad PARITY_DEVICE is the user's error: one line, exit 2, before pytest
    python = ensure_backend_env(backend)
    env = dict(os.environ, **{ENV_VAR: backend})
    # Test paths of the suite (tests/conformance/test_ties.py::test_x) narrow the run; without any,
    # the whole suite runs.
    named = any(arg.startswith(SUITE + "/") for arg in extra if not arg.startswith("-"))
    with children.Child(
        pytest_command(str(python), None if named else SUITE, extra, backend), cwd=ROOT, env=env
    ) as run:
        return run.wait()


def test_all(
    backends: tuple[str, ...],
    extra: list[str],
    timeout: float = DEFAULT_TIMEOUT,
    cache_dir: Path | None = None,
) -> int:
    """Every suite, up to one per core at a time, the longest of the last run first, each printed
    whole when it ends; a summary; exit 1 if any suite failed, timed out or could not run. Envs
    are built meanwhile, in the order the suites need them, and a core never waits on an env
    while a suite whose env is ready could run. ``cache_dir``: pytest's caches and the record of
    suite times, instead of .pytest_cache."""
    selected_device()  # checked once here rather than failing in every suite
    extra, junit = split_junit(extra)
    record = cache_dir / SECONDS_FILE if cache_dir else SECONDS_RECORD
    writable_folder(record.parent, "--cache-dir")
    started = time.monotonic()
    order = longest_first([BASE_SUITE, *backends], record)
    env_ready = build_envs_in_order(list(dict.fromkeys(backend_env(b) for b in order if b in backends)))
    env_of = {b: env_ready[backend_env(b)] for b in backends}

    def arguments(suite: str) -> list[str]:
        return [*extra, f"--junitxml={junit_file(junit, suite)}"] if junit else extra

    jobs = {
        BASE_SUITE: lambda: run_suite(
            BASE_SUITE,
            sys.executable,
            "tests/common",
            arguments(BASE_SUITE),
            None,
            timeout=timeout,
            capture=True,
            cache_root=cache_dir,
        ),  # fmt: skip
        **{b: (lambda b=b: run_backend(b, arguments(b), timeout, env_of[b], cache_dir)) for b in backends},
    }
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    os.environ.update(child_environment(workers))  # suites share the cores: one share of threads each
    print(f"==> {len(jobs)} suites, {workers} at a time (timeout {timeout:g}s each)", flush=True)
    results: dict[str, SuiteResult] = {}
    waiting, running, since = list(order), {}, {}
    status = StatusLine()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        while waiting or running:
            for name in [n for n in waiting if n not in env_of or env_of[n].done()]:  # a failed env too
                if len(running) == workers:
                    break
                waiting.remove(name)
                running[pool.submit(jobs[name])] = name
                since[name] = time.monotonic()
            unbuilt = {env_of[n] for n in waiting if n in env_of and not env_of[n].done()}
            done, _ = wait({*running, *unbuilt}, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done & running.keys():
                status.clear()
                result = results[running.pop(future)] = future.result()
                state = "ok" if result.ok else f"FAILED ({result.problem or 'tests failed'})"
                print(f"\n==> {result.name}: {state} in {result.seconds:.0f}s", flush=True)
                if result.output:
                    print(result.output.rstrip(), flush=True)
            status.update({name: since[name] for name in running.values()}, len(results), len(jobs))
    status.clear()
    ordered = [results[name] for name in jobs]
    record_seconds(ordered, record)
    wall = time.monotonic() - started
    write_record(ordered, wall, REPORTS / TEST_RECORD)
    print(f"\n== paramparity test-all summary ({wall:.0f}s wall)")
    print(summary_table(ordered))
    reasons = reasons_summary(ordered)
    if reasons:
        print("\n" + reasons)
    if junit:
        print(f"\nJUnit files: {', '.join(junit_file(junit, r.name) for r in ordered)}")
    print(f"record: {REPORTS / TEST_RECORD}")
    failed = [r.name for r in ordered if not r.ok]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print(f"\nall {len(ordered)} suites passed")
    return 0


__all__ = ["test_all", "test_one"]
