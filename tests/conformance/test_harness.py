"""The suite's own entry points work in this backend's environment: the command the bare-pytest
header suggests (tests/conftest.py HINT), as written, with this backend and its interpreter."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from common.envs import ROOT
from tests.conftest import HINT


def test_the_suggested_command_collects_this_suite(backend):
    """Before, the hint left out tests/conformance: run as written in a backend's environment, it
    collected tests/common too, which needs the base environment's packages (7 failed, 3 errors)."""
    command = re.search(r"`(PARITY_BACKEND=(\S+) (\S+) (-m pytest[^`]*))`", HINT)
    assert command, f"no command in the hint: {HINT}"
    hinted_backend, hinted_python, arguments = command.group(2), command.group(3), command.group(4)
    assert hinted_python == f".venvs/{hinted_backend}/bin/python"
    result = subprocess.run(
        [sys.executable, *shlex.split(arguments), "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**os.environ, "PARITY_BACKEND": backend.name},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/conformance/") for line in collected), collected[:5]
