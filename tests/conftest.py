"""Shared by both suites: a machine-readable summary for `make test-all`'s table."""

from __future__ import annotations

import json
import os

SUMMARY_ENV = "PARITY_SUMMARY_FILE"
OUTCOMES = ("passed", "failed", "error", "xfailed", "xpassed", "skipped")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = os.environ.get(SUMMARY_ENV)
    if not path:
        return
    counts = {outcome: len(terminalreporter.stats.get(outcome, [])) for outcome in OUTCOMES}
    counts["exitstatus"] = int(exitstatus)
    with open(path, "w") as handle:
        json.dump(counts, handle)
