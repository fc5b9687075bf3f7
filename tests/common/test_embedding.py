"""Embeddings and the transposed tie, framework-free: what the spec accepts and refuses, and the
oracle's lookup and scatter-add gradient, checked against finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle
from common.core.models import EMBED_TIED, load_spec
from common.core.oracle import Loss
from common.core.spec import Dense, Embedding, ModelSpec, ReLU, spec_from_dict
from common.errors import SpecError
from tests.common.test_oracle import finite_difference

# Repeated ids on purpose: 3 appears three times, 0 twice.
IDS = np.array([3, 0, 3, 7, 0, 3])


def test_the_table_is_one_parameter_at_both_positions():
    table = EMBED_TIED.params[0]
    assert (table.name, table.kind, table.shape) == ("layers.0.weight", "embedding", (16, 8))
    assert table.positions == ("layers.0.weight", "layers.3.weight")
    assert EMBED_TIED.owner_of("layers.3.weight") == "layers.0.weight"
    # The output projection keeps its own bias.
    assert EMBED_TIED.owner_of("layers.3.bias") == "layers.3.bias"
    assert "layers.3.weight" not in EMBED_TIED.param_shapes
    assert EMBED_TIED.input_kind == "ids"
    assert EMBED_TIED.untied().param_shapes["layers.3.weight"] == (16, 8)


def test_an_embedding_has_no_bias():
    with pytest.raises(KeyError, match="one parameter, its table"):
        EMBED_TIED.owner_of("layers.0.bias")


def test_the_spec_survives_its_json_form():
    assert spec_from_dict(EMBED_TIED.to_dict()) == EMBED_TIED
    assert load_spec("embed_tied") is EMBED_TIED


@pytest.mark.parametrize(
    ("layers", "ties", "in_features", "message"),
    [
        ((Dense(4), Embedding(16, 4), Dense(16)), (), 16, "must be the first layer the model runs"),
        ((Embedding(16, 8), Dense(16)), (), 4, "in_features=4, but its Embedding takes ids below vocab=16"),
        ((Embedding(16, 8), Dense(15)), ((0, 1),), 16, r"\(in, out\)=\(8, 15\) to the Embedding at layers.0"),
        ((Embedding(16, 8), Dense(4), ReLU(), Dense(16)), ((0, 1),), 16, "takes dim=8 features to vocab=16"),
        ((Embedding(16, 8, trainable=False), Dense(16)), ((0, 1),), 16, "one is frozen and the other is not"),
        ((Embedding(0, 8), Dense(16)), (), 0, "in_features=0"),
        ((Embedding(16, 0), Dense(16)), (), 16, "Embedding dim=0, but should be a positive int"),
    ],
)
def test_bad_embedding_specs_are_refused(layers, ties, in_features, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec("bad", in_features, layers, ties)


def test_ids_are_checked_before_any_layer():
    weights = oracle.initial_weights(EMBED_TIED)
    for bad, message in [
        (np.array([0, 16]), r"ids span \[0, 16\].*in \[0, 16\)"),
        (np.array([-1, 2]), r"ids span \[-1, 2\]"),
        (np.array([[1, 2]]), r"should be \(batch >= 1,\)"),
        (np.array([1.0, 2.0]), "x.dtype=float64, but spec 'embed_tied' takes integer ids"),
    ]:
        with pytest.raises(ValueError, match=message):
            oracle.forward(EMBED_TIED, weights, bad)
    with pytest.raises(ValueError, match="ids, but spec 'tied' takes features"):
        oracle.forward(load_spec("tied"), oracle.initial_weights(load_spec("tied")), IDS)


def test_lookup_returns_the_table_rows():
    spec = ModelSpec("lookup", 16, (Embedding(16, 8), Dense(1)))
    weights = oracle.initial_weights(spec, seed=2)
    weights["layers.1.weight"] = np.eye(1, 8, 0, dtype=np.float32)  # read the first dimension
    weights["layers.1.bias"] = np.zeros(1, np.float32)
    out = oracle.forward(spec, weights, IDS)
    np.testing.assert_array_equal(out[:, 0], weights["layers.0.weight"][IDS, 0])


@pytest.mark.parametrize("loss_kind", ["sum", "mse"])
@pytest.mark.parametrize("tied", [True, False])
def test_gradients_match_finite_differences(tied, loss_kind):
    spec = EMBED_TIED if tied else EMBED_TIED.untied()
    weights = oracle.initial_weights(spec, seed=5)
    loss = Loss() if loss_kind == "sum" else Loss("mse", np.full((len(IDS), 16), 0.25))
    result = oracle.backward(spec, weights, IDS, loss)
    for name in spec.param_shapes:
        numeric = finite_difference(spec, weights, IDS, loss, name)
        np.testing.assert_allclose(result.grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


def test_repeated_ids_accumulate_and_the_tie_sums_both_uses():
    weights = oracle.initial_weights(EMBED_TIED, seed=1)
    result = oracle.backward(EMBED_TIED, weights, IDS, Loss())
    lookup, projection = result.position_grads["layers.0.weight"], result.position_grads["layers.3.weight"]
    # Row 3 is looked up three times: its gradient is the sum of three upstream rows, and rows
    # never looked up get nothing from the lookup.
    assert np.count_nonzero(np.abs(lookup).sum(axis=1)) == len(set(IDS.tolist()))
    untied = oracle.backward(EMBED_TIED.untied(), oracle.expand_tied(EMBED_TIED, weights), IDS, Loss())
    np.testing.assert_allclose(lookup, untied.grads["layers.0.weight"])
    np.testing.assert_allclose(projection, untied.grads["layers.3.weight"])
    np.testing.assert_allclose(result.grads["layers.0.weight"], lookup + projection)
    assert not np.allclose(projection, 0)


def test_sample_input_repeats_ids():
    ids = oracle.sample_input(EMBED_TIED, batch=12)
    assert ids.dtype == np.int64 and ids.shape == (12,)
    assert len(set(ids.tolist())) < len(ids)
