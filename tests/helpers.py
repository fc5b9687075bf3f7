"""Assertion helpers: both sides become numpy first; messages read
``name=actual, but should be expected [context]``."""

from __future__ import annotations

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
