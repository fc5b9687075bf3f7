"""Forward outputs and every gradient equal the numpy oracle, from identical weights."""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle
from common.core.models import BOOK_SPECS
from common.core.oracle import Loss
from tests.conformance.fixtures import BOOK_MODEL_NAMES, book_input, loaded_model
from tests.helpers import assert_close, assert_equal


def make_loss(kind: str, spec, batch: int) -> Loss:
    if kind == "sum":
        return Loss()
    target = np.random.default_rng(7).normal(size=(batch, spec.out_features)).astype(np.float32)
    return Loss("mse", target)


@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_forward_matches_oracle(backend, model_name):
    spec = BOOK_SPECS[model_name]
    model, weights = loaded_model(backend, spec)
    x = book_input(spec)
    assert_close("net(X)", backend.forward(model, x), oracle.forward(spec, weights, x), model_name)


@pytest.mark.parametrize("loss_kind", ["sum", "mse"])
@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_gradients_match_oracle(backend, model_name, loss_kind):
    spec = BOOK_SPECS[model_name]
    model, weights = loaded_model(backend, spec)
    x = book_input(spec)
    loss = make_loss(loss_kind, spec, len(x))
    grads = backend.backward(model, x, loss)
    expected = oracle.backward(spec, weights, x, loss).grads
    assert_equal("gradient names", sorted(grads), sorted(expected), model_name)
    for name in expected:
        assert_close(f"grad {name}", grads[name], expected[name], f"{model_name}, {loss_kind} loss")


def test_backward_does_not_accumulate(backend):
    spec = BOOK_SPECS["tied"]
    model, _ = loaded_model(backend, spec)
    x = book_input(spec)
    first = backend.backward(model, x, Loss())
    second = backend.backward(model, x, Loss())
    for name in first:
        assert_close(f"grad {name}", second[name], first[name], "second backward call")


def test_sgd_step_applies_the_summed_gradient(backend):
    """The framework's own SGD moves each unique parameter by -lr * grad, ties kept."""
    spec, lr = BOOK_SPECS["tied"], 0.1
    model, weights = loaded_model(backend, spec)
    x = book_input(spec)
    loss = make_loss("mse", spec, len(x))
    reference = oracle.backward(spec, weights, x, loss)
    value, applied = backend.sgd_step(model, x, loss, lr)
    assert_close("loss before step", value, reference.loss)
    for name, grad in reference.grads.items():
        assert_close(f"applied grad {name}", applied[name], grad)
        assert_close(name, backend.get_param(model, name), weights[name] - lr * grad, "after one step")
    for param in spec.params:
        for position in param.positions:
            np.testing.assert_array_equal(
                backend.get_param(model, position), backend.get_param(model, param.name)
            )
