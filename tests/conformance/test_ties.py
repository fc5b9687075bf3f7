"""D2L 6.2.3: tied parameters, through each framework's own sharing mechanism."""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle
from common.core.expectations import TIED_POSITIONS
from common.core.models import TIED
from common.core.oracle import Loss
from tests.conformance.fixtures import book_input, loaded_model
from tests.helpers import assert_close, assert_equal

TIED_PAIRS = [(positions[0], other) for positions in TIED_POSITIONS.values() for other in positions[1:]]


@pytest.mark.parametrize("owner, user", TIED_PAIRS)
def test_same_values_at_both_positions(backend, owner, user):
    model, _ = loaded_model(backend, TIED)
    backend.forward(model, book_input(TIED))
    np.testing.assert_array_equal(backend.get_param(model, user), backend.get_param(model, owner))


@pytest.mark.parametrize("written, observed", TIED_PAIRS + [(u, o) for o, u in TIED_PAIRS])
def test_write_at_one_position_is_seen_at_the_other(backend, written, observed):
    """``net[2].weight.data[0, 0] = 100`` shows at ``net[4]``."""
    model, _ = loaded_model(backend, TIED)
    value = backend.get_param(model, written).copy()
    value.flat[0] = 100.0
    backend.set_param(model, written, value)
    assert_equal(
        f"{observed}[0, ...][0]",
        float(backend.get_param(model, observed).flat[0]),
        100.0,
        f"after writing 100 through {written}",
    )


def test_listing_shows_positions_of_each_shared_param(backend):
    model, _ = loaded_model(backend, TIED)
    listed = {p.name: p.positions for p in backend.list_params(model)}
    for name, positions in TIED_POSITIONS.items():
        assert_equal(f"{name}.positions", listed.get(name), positions)


def test_unique_count_is_one_layer_smaller_than_untied(backend):
    tied_model, _ = loaded_model(backend, TIED)
    untied_model = backend.build_mlp(TIED.untied())
    backend.materialize(untied_model)
    tied_count, untied_count = len(backend.list_params(tied_model)), len(backend.list_params(untied_model))
    assert_equal(
        "untied - tied parameter count",
        untied_count - tied_count,
        len(TIED_POSITIONS),
        f"tied={tied_count}, untied={untied_count}: one weight and one bias fewer",
    )


@pytest.mark.parametrize("loss_kind", ["sum", "mse"])
def test_tied_gradient_is_the_sum_over_uses(backend, loss_kind):
    """Checked two ways: against the oracle, and against the untied model with the same weights."""
    x = book_input(TIED)
    loss = Loss() if loss_kind == "sum" else Loss("mse", np.ones((len(x), TIED.out_features), np.float32))
    tied_model, weights = loaded_model(backend, TIED)
    tied_grads = backend.backward(tied_model, x, loss)

    untied = TIED.untied()
    untied_model = backend.build_mlp(untied)
    backend.load_params(untied_model, oracle.expand_tied(TIED, weights))
    untied_grads = backend.backward(untied_model, x, loss)
    reference = oracle.backward(TIED, weights, x, loss)

    for name, positions in TIED_POSITIONS.items():
        summed = sum(untied_grads[position] for position in positions)
        assert_close(f"grad {name}", tied_grads[name], summed, "sum of the untied model's positions")
        assert_close(f"grad {name}", tied_grads[name], reference.grads[name], "oracle")
        oracle_sum = sum(reference.position_grads[position] for position in positions)
        assert_close(f"grad {name}", tied_grads[name], oracle_sum, "oracle, position by position")
