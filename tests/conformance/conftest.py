"""The conformance suite's harness: one backend per run, chosen by PARITY_BACKEND (loaded once by
tests/conftest.py into ``config.parity_backend``).

Known divergences live in the backend's declaration (``[xfails]`` of backends/<name>/backend.toml:
test id = reason); they become strict xfails, so a divergence that disappears fails the run too.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.core.interface import Backend
from common.declarations import declaration


def pytest_report_header(config):
    backend = config.parity_backend
    return (
        f"paramparity backend: {backend.name} ({type(backend).__name__}), "
        f"framework {backend.framework_version()}, numpy {np.__version__}"
    )


def pytest_collection_modifyitems(config, items):
    entry = declaration(config.parity_backend.name)
    xfails = entry.xfails
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
        raise pytest.UsageError(f"{entry.path} [xfails] names tests that do not exist: {sorted(stale)}")


@pytest.fixture(scope="session")
def backend(pytestconfig) -> Backend:
    return pytestconfig.parity_backend
