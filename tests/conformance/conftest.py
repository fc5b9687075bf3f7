"""The conformance suite's harness: one backend per run, chosen by PARITY_BACKEND.

Known divergences live in tests/xfails/<backend>.txt (one test id, a tab or " | ", and the reason,
per line); they become strict xfails, so a divergence that disappears fails the run too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import UsageError
from common.interface import Backend
from common.registry import load_backend

XFAIL_DIR = Path(__file__).resolve().parent.parent / "xfails"


def pytest_configure(config):
    try:
        config.parity_backend = load_backend()
    except UsageError as error:
        raise pytest.UsageError(f"paramparity: {error}") from None


def pytest_report_header(config):
    backend = config.parity_backend
    return (
        f"paramparity backend: {backend.name} ({type(backend).__name__}), "
        f"framework {backend.framework_version()}, numpy {np.__version__}"
    )


def read_xfails(backend: str) -> dict[str, str]:
    path = XFAIL_DIR / f"{backend}.txt"
    if not path.exists():
        return {}
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test_id, sep, reason = line.partition(" | ")
        if not sep or not reason.strip():
            raise pytest.UsageError(f"{path}:{number}: expected '<test id> | <reason>', got {line!r}")
        entries[test_id.strip()] = reason.strip()
    return entries


def pytest_collection_modifyitems(config, items):
    xfails = read_xfails(config.parity_backend.name)
    known, files = set(), set()
    for item in items:
        test_id = item.nodeid.split("conformance/", 1)[-1]  # "test_file.py::test_name[param]"
        files.add(test_id.split("::")[0])
        if test_id in xfails:
            known.add(test_id)
            item.add_marker(pytest.mark.xfail(strict=True, reason=xfails[test_id]))
    # An entry whose file ran but whose test is gone is stale: say so rather than silently pass.
    stale = {test_id for test_id in set(xfails) - known if test_id.split("::")[0] in files}
    if stale and not config.option.keyword and not config.option.markexpr:
        raise pytest.UsageError(
            f"tests/xfails/{config.parity_backend.name}.txt names tests that do not exist: {sorted(stale)}"
        )


@pytest.fixture(scope="session")
def backend(pytestconfig) -> Backend:
    return pytestconfig.parity_backend
