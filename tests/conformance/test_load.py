"""load_params / set_param: bad values are refused with a clear error, and nothing changes."""

from __future__ import annotations

import numpy as np
import pytest

from common.core.models import TIED
from common.core.oracle import initial_weights
from common.errors import ParamFileError
from tests.conformance.fixtures import loaded_model


def corrupt(kind: str) -> dict:
    values = initial_weights(TIED, seed=5)
    if kind == "missing key":
        del values["layers.6.bias"]
    elif kind == "extra key":
        values["layers.9.weight"] = np.zeros((1, 1), np.float32)
    elif kind == "alias stored as a copy":
        values["layers.4.weight"] = values["layers.2.weight"]
    elif kind == "wrong shape":
        values["layers.2.weight"] = np.zeros((8, 4), np.float32)
    elif kind == "wrong dtype":
        values["layers.2.bias"] = np.array(["a"] * 8)
    elif kind == "nan":
        values["layers.0.weight"] = values["layers.0.weight"] * np.nan
    return values


BAD = {
    "missing key": "layers.6.bias",
    "extra key": "layers.9.weight",
    "alias stored as a copy": "alias of layers.2.weight",
    "wrong shape": r"layers.2.weight: shape=\(8, 4\), but should be \(8, 8\)",
    "wrong dtype": "layers.2.bias: dtype",
    "nan": "layers.0.weight: holds NaN",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_values_leave_the_model_unchanged(backend, kind):
    model, _ = loaded_model(backend, TIED)
    before = backend.snapshot(model)
    with pytest.raises(ParamFileError, match=BAD[kind]):
        backend.load_params(model, corrupt(kind))
    after = backend.snapshot(model)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=f"{name} changed by a failed load")


def test_nonfinite_values_load_when_allowed(backend):
    model, _ = loaded_model(backend, TIED)
    backend.load_params(model, corrupt("nan"), allow_nonfinite=True)
    assert np.isnan(backend.get_param(model, "layers.0.weight")).all()


def test_set_param_refuses_a_wrong_shape(backend):
    model, weights = loaded_model(backend, TIED)
    with pytest.raises(ParamFileError, match="shape"):
        backend.set_param(model, "layers.4.weight", np.zeros((8, 4), np.float32))
    np.testing.assert_array_equal(backend.get_param(model, "layers.4.weight"), weights["layers.2.weight"])
