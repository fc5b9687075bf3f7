"""D2L 6.5, layers with parameters: a Dense built from the adapter's own custom layer class (the
book's ``MyLinear``: weight and bias created by the user's class through the framework's
custom-layer API) is listed, tied, differentiated and trained like the built-in one, beside it in
one model (custom_tied: a built-in first layer, then custom layers, two of them tied)."""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle
from common.core.interface import qualname
from common.core.models import CUSTOM_TIED, TIED
from common.core.oracle import Loss
from common.core.spec import Dense
from tests.conformance.fixtures import book_input, loaded_model
from tests.helpers import assert_close, assert_equal

pytestmark = pytest.mark.usefixtures("custom_layer_declared")

CUSTOM_PATHS = tuple(path for path, layer in CUSTOM_TIED.walk() if isinstance(layer, Dense) and layer.custom)
BUILT_IN_PATHS = tuple(
    path for path, layer in CUSTOM_TIED.walk() if isinstance(layer, Dense) and not layer.custom
)
SHARED = [p for p in CUSTOM_TIED.params if len(p.positions) > 1]
STEPS, LR = 20, 0.05


@pytest.fixture
def custom_layer_declared(backend):
    capability = backend.declaration.capability("custom_layer")
    if not capability.value:
        pytest.skip(f"{backend.name} declares no custom layer: {capability.reason}")


def test_custom_positions_hold_the_adapters_own_class(backend):
    """The flag reaches the framework: each custom position holds a class other than the one the
    same position holds in the built-in model (the tied MLP, identical but for the flag)."""
    custom = backend.position_table(backend.build_mlp(CUSTOM_TIED))
    built_in = backend.position_table(backend.build_mlp(TIED))
    for path in CUSTOM_PATHS:
        assert qualname(custom[path]) != qualname(built_in[path]), (
            f"layer {path}: {qualname(custom[path])}, the built-in class, "
            "but should be the adapter's custom one"
        )
    for path in BUILT_IN_PATHS:
        assert_equal(f"layer {path} class", qualname(custom[path]), qualname(built_in[path]), "built-in")


def test_listing_holds_every_custom_parameter_as_a_framework_parameter(backend):
    """Created through the framework's API, the custom layer's weight and bias are parameters of
    the framework's own kind, in its own listing, under the names the user's class gave them."""
    model, _ = loaded_model(backend, CUSTOM_TIED)
    infos = {p.name: p for p in backend.list_params(model)}
    assert_equal("unique parameters", sorted(infos), sorted(CUSTOM_TIED.param_shapes))
    for name, info in infos.items():
        assert_equal(f"{name}.shape", info.shape, CUSTOM_TIED.param_shapes[name])
    call, listed = backend.listing(model)
    missing = [p.native_name for p in infos.values() if p.native_name not in listed]
    assert_equal(f"native names missing from {call}", missing, [], f"listed: {listed}")
    built_in_class = infos["layers.0.weight"].native_class
    for param in CUSTOM_TIED.params:
        if param.owner in CUSTOM_PATHS:
            assert_equal(
                f"{param.name} class", infos[param.name].native_class, built_in_class, "as the built-in's"
            )


def test_tie_is_one_parameter_object(backend):
    model, _ = loaded_model(backend, CUSTOM_TIED)
    positions = {p.name: p.positions for p in backend.list_params(model)}
    for shared in SHARED:
        assert_equal(f"{shared.name}.positions", positions[shared.name], shared.positions)
    assert_equal("same parameter object", backend.tie_identity(model)["same parameter object"], True)
    owner, user = SHARED[0].positions
    value = backend.get_param(model, owner).copy()
    value.flat[0] = 100.0
    backend.set_param(model, owner, value)
    assert_equal(f"{user}[0]", float(backend.get_param(model, user).flat[0]), 100.0, f"written at {owner}")


@pytest.mark.parametrize("loss_kind", ["sum", "mse"])
def test_forward_and_gradients_match_the_oracle(backend, loss_kind):
    model, weights = loaded_model(backend, CUSTOM_TIED, seed=3)
    x = book_input(CUSTOM_TIED)
    loss = Loss("sum") if loss_kind == "sum" else Loss("mse", np.ones((len(x), 1)))
    reference = oracle.backward(CUSTOM_TIED, weights, x, loss)
    assert_close("net(X)", backend.forward(model, x), reference.output)
    grads = backend.backward(model, x, loss)
    assert_equal("gradient names", sorted(grads), sorted(reference.grads))
    for name, grad in grads.items():
        assert_close(f"grad {name}", grad, reference.grads[name], f"{loss_kind} loss; a tie sums its uses")


def test_training_matches_the_oracle(backend):
    model, weights = loaded_model(backend, CUSTOM_TIED, seed=5)
    x = book_input(CUSTOM_TIED)
    loss = Loss("mse", np.full((len(x), 1), 0.5))
    losses, _ = backend.train(model, x, loss, LR, STEPS)
    reference = oracle.train(CUSTOM_TIED, weights, x, loss, LR, STEPS)
    assert_close(
        "loss curve", losses, reference.losses, f"{STEPS} SGD steps at lr {LR}", rtol=1e-5, atol=1e-7
    )
    for name, value in backend.snapshot(model).items():
        assert_close(f"{name} after training", value, reference.params[name], rtol=1e-5, atol=1e-6)
    for shared in SHARED:
        first, *others = shared.positions
        for other in others:
            np.testing.assert_array_equal(backend.get_param(model, other), backend.get_param(model, first))


def test_custom_and_built_in_layers_compute_the_same_function(backend):
    """The custom layer is used "just like the built-in fully connected layer": with the same
    weights, the mixed model and the all-built-in tied MLP give the same outputs."""
    custom, weights = loaded_model(backend, CUSTOM_TIED, seed=7)
    built_in = backend.build_mlp(TIED)
    backend.load_params(built_in, weights)
    x = book_input(TIED)
    assert_close(
        "custom net(X) against built-in net(X)", backend.forward(custom, x), backend.forward(built_in, x)
    )
