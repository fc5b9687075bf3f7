"""Lazy input sizes: the spec names no input width per layer; each framework infers it."""

from __future__ import annotations

import pytest

from common.core.expectations import BOOK_PARAM_SHAPES
from common.core.models import BOOK_SPECS, MLP
from common.declarations import declaration
from tests.conformance.fixtures import BOOK_MODEL_NAMES, book_input
from tests.helpers import assert_equal


def test_unbuilt_params_match_the_declared_laziness(backend):
    """A lazy backend holds no parameter of the first layer's full (8, 4) shape before the first
    forward; an eager one (capability declared false, with its reason) already holds it."""
    lazy = declaration(backend.name).capability("lazy_input_size")
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
    knows_width = bool(full & set(unbuilt.values()))
    assert_equal(
        "input width known before the first forward",
        knows_width,
        not lazy.value,
        f"declared lazy_input_size={lazy.value}: {lazy.reason}; unbuilt={unbuilt}",
    )


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
