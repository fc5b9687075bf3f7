"""Shared by both suites: a machine-readable summary for `make test-all`'s table, and what a
bare `pytest` from the repo root does: tests/common always, tests/conformance only when
PARITY_BACKEND names a backend (in that backend's environment)."""

from __future__ import annotations

import json
import os

import pytest

SUMMARY_ENV = "PARITY_SUMMARY_FILE"
BACKEND_ENV = "PARITY_BACKEND"  # only tested for presence here; common.config reads its value
CONFORMANCE = os.path.join(os.path.dirname(__file__), "conformance")
# The conformance folder is named: a backend's environment lacks tests/common's dependencies.
HINT = (
    "conformance suite not collected: set PARITY_BACKEND to run it here, e.g. "
    "`PARITY_BACKEND=torch .venvs/torch/bin/python -m pytest tests/conformance`, or run `make test-all`"
)


def _skips_conformance(config) -> bool:
    explicit = any(os.path.abspath(str(arg)).startswith(CONFORMANCE) for arg in config.args)
    return not explicit and not os.environ.get(BACKEND_ENV, "").strip()


def pytest_configure(config):
    """The backend is loaded here, once, where a bad PARITY_BACKEND or a missing framework can
    still end the run with one line (a late conftest's error becomes an INTERNALERROR)."""
    if _skips_conformance(config):
        return
    from common.errors import UsageError
    from common.registry import load_backend

    try:
        config.parity_backend = load_backend(suite=True)
    except UsageError as error:
        raise pytest.UsageError(f"paramparity: {error}") from None


def pytest_ignore_collect(collection_path, config):
    if _skips_conformance(config) and str(collection_path).startswith(CONFORMANCE):
        return True
    return None


def pytest_report_header(config):
    return HINT if _skips_conformance(config) else None


OUTCOMES = ("passed", "failed", "error", "xfailed", "xpassed", "skipped")


def _reason(report) -> str:
    """Why a test was skipped or xfailed, as pytest's -rsx line would say."""
    if getattr(report, "wasxfail", ""):
        return str(report.wasxfail)
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = os.environ.get(SUMMARY_ENV)
    if not path:
        return
    counts = {outcome: len(terminalreporter.stats.get(outcome, [])) for outcome in OUTCOMES}
    counts["exitstatus"] = int(exitstatus)
    reasons: dict[str, dict[str, int]] = {}
    for outcome in ("skipped", "xfailed"):
        for report in terminalreporter.stats.get(outcome, []):
            by_reason = reasons.setdefault(outcome, {})
            by_reason[_reason(report)] = by_reason.get(_reason(report), 0) + 1
    counts["reasons"] = reasons
    with open(path, "w") as handle:
        json.dump(counts, handle)
