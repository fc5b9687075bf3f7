"""Fuzz the backends with generated specs: tests/conformance/test_properties.py with many examples.

Each backend runs the property suite in its own environment, up to one suite per core at a time
(each gets its share of the math threads), with PARITY_EXAMPLES examples per property and
PARITY_SEED as the seed, so a campaign with another seed draws other specs. Every falsifying
example Hypothesis settles on is printed as the JSON the failing test noted
(``PARITY-CASE {...}``): ``case_from_dict(json.loads(TEXT))`` rebuilds it in a regression test,
and its ``spec`` pastes into ``spec_from_dict``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from common.commands.fanout import child_environment
from common.commands.testing import SuiteResult, run_suite
from common.config import DEFAULT_TIMEOUT, seconds_option
from common.envs import ensure_backend_env
from common.errors import UsageError

SUITE = "tests/conformance/test_properties.py"
EXAMPLES_ENV = "PARITY_EXAMPLES"  # read by common.core.generate.budget, in the test process
SEED_ENV = "PARITY_SEED"
CASE_MARKER = "PARITY-CASE"  # common.core.generate.CASE_MARKER (not imported: it imports hypothesis)
_SECTION = re.compile(r"^_{3,} (\S+) _{3,}$")


@dataclass
class Counterexample:
    test: str
    case: Any  # a Case's dict ({"spec", "batch", "loss"}), or an invalid spec's data
    error: str = ""


@dataclass
class BackendRun:
    backend: str
    result: SuiteResult
    counterexamples: list[Counterexample] = field(default_factory=list)


def counterexamples(output: str) -> list[Counterexample]:
    """The ``PARITY-CASE`` lines of a pytest run, each with its test (the failure section it is
    printed in) and the first line of the error pytest shows there."""
    found: list[Counterexample] = []
    test, error = "", ""
    for raw in output.splitlines():
        line = raw.strip()
        header = _SECTION.match(line)
        if header:
            test, error = header.group(1), ""
            continue
        if line.startswith("E ") and not error:
            error = line[1:].strip()
        text = line[1:].strip() if line.startswith("E ") else line
        if text.startswith(CASE_MARKER + " "):
            try:
                case = json.loads(text[len(CASE_MARKER) + 1 :])
            except ValueError:
                continue
            found.append(Counterexample(test, case, error))
    return found


def command_flags() -> list[str]:
    # No -x: every property reports its own counterexample. --tb=short keeps Hypothesis's notes.
    return ["-q", "-p", "no:cacheprovider", "--tb=short"]


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the child processes started inside, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


SECONDS_PER_EXAMPLE = 8.0  # the default timeout's allowance: a JAX-family example takes about 2 s


def default_timeout(examples: int) -> float:
    """Per backend: room for ``examples`` slow examples, and never less than the usual timeout."""
    return max(DEFAULT_TIMEOUT, SECONDS_PER_EXAMPLE * examples)


def run(backends: tuple[str, ...] | list[str], examples: int, seed: int, timeout: float | None = None) -> int:
    """Run the property suite in each backend's environment with ``examples`` examples per
    property and Hypothesis seeded with ``seed``; print each counterexample as JSON. Returns 0
    when every backend passed, 1 otherwise (a failure, a timeout, an environment that cannot be
    made)."""
    if examples < 1:
        raise UsageError(f"examples={examples}, but should be a positive int")
    if seed < 0:
        raise UsageError(f"seed={seed}, but should be an int >= 0")
    timeout = default_timeout(examples) if timeout is None else timeout
    runs: dict[str, BackendRun] = {}
    pythons: dict[str, str] = {}
    for backend in backends:  # make and pip are not parallel-safe: environments first, in turn
        try:
            pythons[backend] = str(ensure_backend_env(backend, quiet=True))
        except UsageError as error:
            runs[backend] = BackendRun(backend, SuiteResult(backend, {}, 2, 0.0, f"environment: {error}"))
            print(report_line(runs[backend]), flush=True)
    workers = max(1, min(len(pythons), os.cpu_count() or 1))
    print(
        f"{len(pythons)} backends, {workers} at a time: {examples} examples per property, seed {seed}, "
        f"timeout {timeout:.0f}s each",
        flush=True,
    )

    def fuzz(backend: str) -> BackendRun:
        result = run_suite(
            backend, pythons[backend], SUITE, command_flags(), backend, timeout=timeout, capture=True
        )
        return BackendRun(backend, result, counterexamples(result.output))

    values = {**child_environment(workers), EXAMPLES_ENV: str(examples), SEED_ENV: str(seed)}
    with environment(values), concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(fuzz, backend) for backend in pythons]
        for future in concurrent.futures.as_completed(futures):
            item = future.result()
            runs[item.backend] = item
            print(report_line(item), flush=True)
    runs = {backend: runs[backend] for backend in backends}
    print()
    for item in runs.values():
        if not item.result.ok and not item.counterexamples:
            tail = "\n".join(item.result.output.rstrip().splitlines()[-15:])
            print(f"== {item.backend}: {item.result.problem or 'failed'}\n{tail}\n")
        for example in item.counterexamples:
            print(f"== {item.backend} {example.test}: {example.error}")
            print(f"case: {json.dumps(example.case, sort_keys=True)}")
            if isinstance(example.case, dict) and "spec" in example.case:
                print(f"spec: {json.dumps(example.case['spec'], sort_keys=True)}")
            print()
    failed = [item.backend for item in runs.values() if not item.result.ok]
    print(f"FAILED: {', '.join(failed)}" if failed else f"all {len(runs)} backends passed")
    return 1 if failed else 0


def report_line(item: BackendRun) -> str:
    result = item.result
    counts = ", ".join(
        f"{result.counts.get(k, 0)} {k}" for k in ("passed", "failed", "error") if result.counts
    )
    state = (
        "ok" if result.ok else f"FAILED ({result.problem or f'{len(item.counterexamples)} counterexamples'})"
    )
    return f"[{item.backend}] {state} in {result.seconds:.0f}s{': ' + counts if counts else ''}"


def add_suite_timeout_option(parser, flag: str) -> None:
    parser.add_argument(
        flag,
        type=seconds_option(flag),
        default=None,
        metavar="SECONDS",
        help=f"give up on one backend's suite after this many seconds (default: {SECONDS_PER_EXAMPLE:.0f} "
        f"per example, at least {DEFAULT_TIMEOUT:.0f})",
    )


__all__ = ["Counterexample", "add_suite_timeout_option", "counterexamples", "run"]
