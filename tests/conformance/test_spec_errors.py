"""An invalid spec fails identically in every backend, before the adapter is reached."""

from __future__ import annotations

import pytest

from common.core.spec import spec_from_dict
from common.errors import SpecError
from tests.common.spec_cases import INVALID_SPECS


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_invalid_spec_never_reaches_the_backend(backend, monkeypatch, case):
    data, message = INVALID_SPECS[case]
    calls = []
    monkeypatch.setattr(type(backend), "build_mlp", lambda self, spec: calls.append(spec))
    with pytest.raises(SpecError, match=message):
        backend.build_mlp(spec_from_dict(data))
    assert calls == [], "the adapter was called with an invalid spec"
