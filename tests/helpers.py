"""Assertion helpers: both sides become numpy first; messages read
``name=actual, but should be expected [context]``."""

from __future__ import annotations

import contextlib
import resource
import signal
from collections.abc import Iterator

import numpy as np

from common.core.expectations import ATOL, RTOL


def assert_close(name: str, actual, expected, context: str = "", rtol: float = RTOL, atol: float = ATOL):
    __tracebackhide__ = True
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (
        f"{name}.shape={actual.shape}, but should be {expected.shape} [{context}]"
    )
    if not np.allclose(actual, expected, rtol=rtol, atol=atol):
        delta = np.max(np.abs(actual - expected))
        raise AssertionError(
            f"{name} differs by max |delta|={delta:.3g}, but should be within "
            f"rtol={rtol}, atol={atol} [{context}]"
        )


def assert_equal(name: str, actual, expected, context: str = ""):
    __tracebackhide__ = True
    assert actual == expected, f"{name}={actual!r}, but should be {expected!r} [{context}]"


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """In this process, a write past ``max_bytes`` of any file fails (EFBIG, SIGXFSZ ignored), as
    on a full disk: a writer fails midway, inside its own code, whatever the framework."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Fail the block once this process has spent ``seconds`` of CPU in it (ITIMER_PROF: CPU time,
    not wall time, so a busy machine does not fail it), so a check that is quadratic fails in a
    second instead of running for hours. Python code and the regex engine see the signal; it
    repeats every 50 ms of CPU, and the block fails on exit, should the code swallow it."""
    fired: list[bool] = []

    def expired(signum, frame):
        fired.append(True)
        raise AssertionError(f"more than {seconds} s of CPU, but should be less")

    handler = signal.signal(signal.SIGPROF, expired)
    signal.setitimer(signal.ITIMER_PROF, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, handler)
    if fired:
        raise AssertionError(f"more than {seconds} s of CPU, but should be less")
