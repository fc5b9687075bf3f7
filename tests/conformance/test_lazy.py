"""Lazy input sizes: the spec names no input width per layer; each framework infers it."""

from __future__ import annotations

import pytest

from common.expectations import BOOK_PARAM_SHAPES
from common.models import BOOK_SPECS, MLP
from tests.conformance.fixtures import BOOK_MODEL_NAMES, book_input
from tests.helpers import assert_equal


def test_unbuilt_params_do_not_know_the_input_width(backend):
    """Before the first forward no parameter may claim the first layer's full (8, 4) shape."""
    model = backend.build_mlp(MLP)
    unbuilt = backend.unbuilt_params(model)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in unbuilt.items()), unbuilt
    full = {
        str(shape)
        for shape in (
            BOOK_PARAM_SHAPES["mlp"]["layers.0.weight"],
            BOOK_PARAM_SHAPES["mlp"]["layers.0.weight"][::-1],
        )
    }
    assert not full & set(unbuilt.values()), f"unbuilt shapes={unbuilt}, but the input width is unknown yet"


@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_first_forward_fixes_shapes(backend, model_name):
    spec = BOOK_SPECS[model_name]
    model = backend.build_mlp(spec)
    backend.forward(model, book_input(spec))
    shapes = {p.name: p.shape for p in backend.list_params(model)}
    assert_equal("shapes after first forward", shapes, BOOK_PARAM_SHAPES[model_name], model_name)


def test_materialize_is_idempotent(backend):
    model = backend.build_mlp(MLP)
    backend.materialize(model)
    before = backend.snapshot(model)
    backend.materialize(model)
    after = backend.snapshot(model)
    for name in before:
        assert (before[name] == after[name]).all(), f"{name} changed on a second materialize()"
