"""The oracle's own gradients, checked against central finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle
from common.core.models import BOOK_SPECS, TIED
from common.core.oracle import Loss


def finite_difference(spec, weights, x, loss, name, eps=1e-6):
    weights = {k: v.astype(np.float64) for k, v in weights.items()}
    grad = np.zeros_like(weights[name])
    for index in np.ndindex(grad.shape):
        original = weights[name][index]
        weights[name][index] = original + eps
        plus = loss.value(oracle.forward(spec, weights, x))
        weights[name][index] = original - eps
        minus = loss.value(oracle.forward(spec, weights, x))
        weights[name][index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.parametrize("loss_kind", ["sum", "mse"])
@pytest.mark.parametrize("model_name", ["mlp", "tied"])
def test_gradients_match_finite_differences(model_name, loss_kind):
    spec = BOOK_SPECS[model_name]
    weights = oracle.initial_weights(spec, seed=3)
    x = oracle.sample_input(spec, batch=3, seed=4)
    loss = Loss() if loss_kind == "sum" else Loss("mse", np.full((3, spec.out_features), 0.5))
    result = oracle.backward(spec, weights, x, loss)
    for name in spec.param_shapes:
        numeric = finite_difference(spec, weights, x, loss, name)
        np.testing.assert_allclose(result.grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


def test_nest_gradient_spot_check():
    spec = BOOK_SPECS["nest"]
    weights = oracle.initial_weights(spec)
    x = oracle.sample_input(spec)
    result = oracle.backward(spec, weights, x, Loss())
    numeric = finite_difference(spec, weights, x, Loss(), "layers.0.1.bias")
    np.testing.assert_allclose(result.grads["layers.0.1.bias"], numeric, rtol=1e-5, atol=1e-7)


def test_tied_gradient_is_the_sum_of_position_contributions():
    weights = oracle.initial_weights(TIED)
    x = oracle.sample_input(TIED)
    result = oracle.backward(TIED, weights, x, Loss())
    for role in ("weight", "bias"):
        parts = result.position_grads[f"layers.2.{role}"] + result.position_grads[f"layers.4.{role}"]
        np.testing.assert_allclose(result.grads[f"layers.2.{role}"], parts)
        assert not np.allclose(result.position_grads[f"layers.4.{role}"], 0)


def test_untied_with_expanded_weights_computes_the_same_function():
    weights = oracle.initial_weights(TIED)
    x = oracle.sample_input(TIED)
    untied = oracle.expand_tied(TIED, weights)
    np.testing.assert_allclose(oracle.forward(TIED, weights, x), oracle.forward(TIED.untied(), untied, x))


def test_initial_weights_are_seeded_float32():
    a, b = oracle.initial_weights(TIED, 0), oracle.initial_weights(TIED, 0)
    assert all(a[k].dtype == np.float32 and (a[k] == b[k]).all() for k in a)
    assert not np.array_equal(a["layers.0.weight"], oracle.initial_weights(TIED, 1)["layers.0.weight"])


def test_loss_validation():
    with pytest.raises(ValueError, match="kind='l1'"):
        Loss("l1")
    with pytest.raises(ValueError, match="needs a target"):
        Loss("mse")
