"""An invalid spec fails identically in every backend, at the backend's own entry (build_mlp
takes spec data too), before any adapter primitive runs: nothing is half-built."""

from __future__ import annotations

import pytest

from common.errors import SpecError
from tests.common.spec_cases import INVALID_SPECS
from tests.conformance.fixtures import recording


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_invalid_spec_never_reaches_the_adapter(backend, case):
    data, message = INVALID_SPECS[case]
    with recording(backend) as calls, pytest.raises(SpecError, match=message):
        backend.build_mlp(data)
    assert calls == [], f"the adapter was called with an invalid spec: {calls}"
