"""Embeddings and the transposed tie (the input embedding's table is the output projection's
weight), through each framework's own idiom, held to the oracle; and the tie's declared facts
([facts] embedding_*) checked against the behaviour.

A backend that declares no embedding skips these with its declared reason; the refusal itself is
checked in every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle, portable
from common.core.expectations import EMBED_TIED_OWN, EMBED_TIED_POSITIONS
from common.core.models import EMBED_TIED
from common.core.oracle import Loss
from common.core.spec import spec_from_dict
from common.declarations import declaration
from common.errors import UsageError
from tests.conformance.fixtures import recording
from tests.helpers import assert_close, assert_equal

TABLE, READER = EMBED_TIED_POSITIONS["layers.0.weight"]
# Repeated ids on purpose (the lookup's gradient is a scatter-add): 3 three times, 0 twice.
IDS = np.array([3, 0, 3, 7, 0, 3, 12, 15])
STEPS = 4
LR = 0.1


def _requires_embedding(backend) -> None:
    declared = declaration(backend.name).capability("embedding")
    if not declared.value:
        pytest.skip(f"embedding is declared false: {declared.reason}")


def _fact(backend, key: str):
    return declaration(backend.name).facts[key]


def _loaded(backend, seed: int = 0):
    model = backend.build_mlp(EMBED_TIED)
    weights = oracle.initial_weights(EMBED_TIED, seed)
    backend.load_params(model, weights)
    return model, weights


def _mse():
    target = np.random.default_rng(9).uniform(-1, 1, size=(len(IDS), EMBED_TIED.out_features))
    return Loss("mse", target.astype(np.float32))


def assert_still_tied(backend, model, context: str) -> None:
    """A declared tie shares storage: a write through either use shows at the other."""
    __tracebackhide__ = True
    for written, observed in ((TABLE, READER), (READER, TABLE)):
        value = backend.get_param(model, written).copy()
        value.flat[1] = 42.0
        backend.set_param(model, written, value)
        assert_equal(
            f"{observed}.flat[1]",
            float(backend.get_param(model, observed).flat[1]),
            42.0,
            f"{context}: after writing 42 through {written}",
        )


def test_a_backend_without_embeddings_refuses_before_its_framework(backend):
    declared = declaration(backend.name).capability("embedding")
    if declared.value:
        pytest.skip("the backend declares embeddings; the tests below hold it to them")
    with recording(backend) as calls, pytest.raises(UsageError, match="it needs embedding"):
        backend.build_mlp(EMBED_TIED)
    assert calls == []


def test_forward_matches_the_oracle(backend):
    _requires_embedding(backend)
    model, weights = _loaded(backend)
    assert_close("net(ids)", backend.forward(model, IDS), oracle.forward(EMBED_TIED, weights, IDS))


@pytest.mark.parametrize("loss_kind", ["sum", "mse"])
def test_gradients_match_the_oracle(backend, loss_kind):
    """The table's gradient is the lookup's scatter-add plus the projection's, summed by the
    framework through the tie."""
    _requires_embedding(backend)
    model, weights = _loaded(backend)
    loss = Loss() if loss_kind == "sum" else _mse()
    expected = oracle.backward(EMBED_TIED, weights, IDS, loss)
    grads = backend.backward(model, IDS, loss)
    assert_equal("gradient names", sorted(grads), sorted(EMBED_TIED.param_shapes))
    for name, grad in expected.grads.items():
        assert_close(f"grad {name}", grads[name], grad, loss_kind)


def test_training_matches_the_oracle_and_the_uses_stay_identical(backend):
    _requires_embedding(backend)
    model, weights = _loaded(backend)
    loss = _mse()
    losses, _ = backend.train(model, IDS, loss, LR, STEPS)
    expected_losses, expected = oracle.train(EMBED_TIED, weights, IDS, loss, LR, STEPS)[:2]
    assert_close("losses", losses, expected_losses, f"{STEPS} SGD steps")
    for name, value in expected.items():
        assert_close(name, backend.get_param(model, name), value, f"after {STEPS} SGD steps")
    np.testing.assert_array_equal(backend.get_param(model, READER), backend.get_param(model, TABLE))


def test_a_write_through_the_embedding_shows_at_the_output(backend):
    _requires_embedding(backend)
    model, weights = _loaded(backend)
    table = np.random.default_rng(3).uniform(-1, 1, size=EMBED_TIED.param_shapes[TABLE]).astype(np.float32)
    backend.set_param(model, TABLE, table)
    np.testing.assert_array_equal(backend.get_param(model, READER), table)
    assert_close(
        "net(ids)", backend.forward(model, IDS), oracle.forward(EMBED_TIED, {**weights, TABLE: table}, IDS)
    )


def test_the_listing_holds_the_table_once_with_both_uses(backend):
    _requires_embedding(backend)
    model, _ = _loaded(backend)
    listed = {p.name: p.positions for p in backend.list_params(model)}
    assert_equal("unique parameters", sorted(listed), sorted([TABLE, *EMBED_TIED_OWN]))
    assert_equal(f"{TABLE}.positions", listed[TABLE], EMBED_TIED_POSITIONS[TABLE])
    assert_equal("one table object at both uses", backend.tie_identity(model)["same parameter object"], True)


@pytest.mark.parametrize("path_kind", ["load_params", "portable file", "native file"])
def test_the_tie_survives_every_load_path(backend, tmp_path, path_kind):
    _requires_embedding(backend)
    source, _ = _loaded(backend, seed=4)
    target, _ = _loaded(backend, seed=0)
    if path_kind == "load_params":
        backend.load_params(target, backend.snapshot(source))
    elif path_kind == "portable file":
        portable.export_params(backend, source, tmp_path / "params.npz")
        portable.import_params(backend, target, tmp_path / "params.npz")
    else:
        backend.save_native_file(source, str(tmp_path / "native"))
        backend.import_native_file(target, str(tmp_path / "native"))
    for name, value in backend.snapshot(source).items():
        np.testing.assert_array_equal(
            backend.get_param(target, name), value, err_msg=f"{name} after {path_kind}"
        )
    assert_still_tied(backend, target, f"after loading through the {path_kind}")


# -- declared facts -----------------------------------------------------------------------------------
def test_the_declared_mechanism_is_what_the_framework_holds(backend):
    """ "same_parameter": the projection is the framework's own Dense (the class the untied layer at
    layers.1 has), holding the table's Parameter; "table_read": it is something else that reads
    the table."""
    _requires_embedding(backend)
    model, _ = _loaded(backend)
    table = backend.position_table(model)
    projection, dense = table[(3,)], table[(1,)]
    observed = "same_parameter" if type(projection) is type(dense) else "table_read"
    assert_equal(
        "embedding_tie",
        observed,
        _fact(backend, "embedding_tie"),
        f"projection is a {type(projection).__qualname__}",
    )
    assert backend.param_object(model, READER) is backend.param_object(model, TABLE)


def test_the_declared_listing_count_holds(backend):
    _requires_embedding(backend)
    model, _ = _loaded(backend)
    call, names = backend.listing(model)
    assert_equal(
        f"entries of {call}", len(names), _fact(backend, "embedding_listing_entries"), ", ".join(names)
    )


def test_the_declared_saved_copies_hold(backend):
    _requires_embedding(backend)
    model, _ = _loaded(backend)
    copies = [key for key, owner in backend.native_file_keys(model).items() if owner == TABLE]
    assert_equal(
        "entries holding the table", len(copies), _fact(backend, "embedding_saved_copies"), ", ".join(copies)
    )


def test_a_frozen_tied_table_stays_bit_identical_while_the_rest_trains(backend):
    """Freezing the embedding freezes the table at both uses (a tie shares one trainable flag: the
    spec refuses anything else); the head's own bias is frozen with it, the hidden Dense trains."""
    _requires_embedding(backend)
    for capability in ("freezing",):
        declared = declaration(backend.name).capability(capability)
        if not declared.value:
            pytest.skip(f"{capability} is declared false: {declared.reason}")
    data = EMBED_TIED.to_dict()
    data["layers"][0]["trainable"] = False
    data["layers"][3]["trainable"] = False
    spec = spec_from_dict({**data, "name": "embed_tied_frozen"})
    model = backend.build_mlp(spec)
    weights = oracle.initial_weights(spec)
    backend.load_params(model, weights)
    loss = _mse()
    losses, _ = backend.train(model, IDS, loss, LR, STEPS)
    expected_losses, expected = oracle.train(spec, weights, IDS, loss, LR, STEPS)[:2]
    assert_close("losses", losses, expected_losses, f"{STEPS} SGD steps, the table frozen")
    for name in (TABLE, READER, "layers.3.bias"):
        np.testing.assert_array_equal(
            backend.get_param(model, name), weights[spec.owner_of(name)], err_msg=name
        )
    assert_close("layers.1.weight", backend.get_param(model, "layers.1.weight"), expected["layers.1.weight"])
    assert not np.array_equal(expected["layers.1.weight"], weights["layers.1.weight"]), "layer 1 must train"
