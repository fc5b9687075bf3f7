"""D2L 6.2.1: parameter access — one layer, targeted, all at once, nested — for one backend."""

from __future__ import annotations

import numpy as np
import pytest

from common.core.expectations import (
    BOOK_OUTPUT_SHAPES,
    BOOK_PARAM_SHAPES,
    NEST_LEVELS,
)
from common.core.models import BOOK_SPECS, MLP, NEST
from common.core.spec import layer_name
from common.declarations import declaration
from tests.conformance.fixtures import BOOK_MODEL_NAMES, book_input, loaded_model
from tests.helpers import assert_close, assert_equal


@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_output_shape(backend, model_name):
    spec = BOOK_SPECS[model_name]
    model = backend.build_mlp(spec)
    output = backend.forward(model, book_input(spec))
    assert_equal("net(X).shape", tuple(np.shape(output)), BOOK_OUTPUT_SHAPES[model_name], model_name)


# Where each canonical (out, in) axis sits in the native shape, per declared layout.
CANONICAL_AXES_IN_NATIVE_ORDER = {"(out, in)": (0, 1), "(in, out)": (1, 0)}


def test_the_declared_weight_layout_is_the_native_one(backend):
    """The layout is stated once, in the declaration; the framework's own weight object must have
    that shape (the MLP's first weight is 8 x 4, so a wrong declaration cannot pass)."""
    model, _ = loaded_model(backend, MLP)
    declared = declaration(backend.name).fact("weight_layout")
    canonical = BOOK_PARAM_SHAPES["mlp"]["layers.0.weight"]
    native = next(p.native_shape for p in backend.list_params(model) if p.name == "layers.0.weight")
    expected = tuple(canonical[axis] for axis in CANONICAL_AXES_IN_NATIVE_ORDER[declared])
    assert_equal("native shape of layers.0.weight", native, expected, f"declared weight_layout={declared}")


def test_layer_2_weight_and_bias(backend):
    """``net[2].state_dict()``: both layouts, and the values that were loaded."""
    model, weights = loaded_model(backend, MLP)
    params = backend.layer(model, 2)
    assert_equal("net[2].weight.shape", params.weight.shape, BOOK_PARAM_SHAPES["mlp"]["layers.2.weight"])
    assert_equal("net[2].bias.shape", params.bias.shape, BOOK_PARAM_SHAPES["mlp"]["layers.2.bias"])
    assert_close("net[2].weight", params.weight, weights["layers.2.weight"], "canonical layout")
    assert_close("net[2].bias", params.bias, weights["layers.2.bias"])
    assert_close(
        "net[2].weight (native)",
        backend.to_canonical("weight", params.native_weight),
        weights["layers.2.weight"],
        f"native layout {backend.weight_layout}",
    )


def test_targeted_bias_value_and_type(backend):
    """``type(net[2].bias), net[2].bias.data``."""
    model, weights = loaded_model(backend, MLP)
    assert_close("net[2].bias.data", backend.get_param(model, "layers.2.bias"), weights["layers.2.bias"])
    info = {p.name: p for p in backend.list_params(model)}
    native_type = backend.native_type(model, "layers.2.bias")
    assert_equal(
        "type(net[2].bias)",
        native_type,
        info["layers.2.bias"].native_class,
        "targeted access and the listing must see the same object class",
    )
    assert "." in native_type, f"type(net[2].bias)={native_type!r}, but should be a qualified class name"


def test_grad_state_before_backward(backend):
    model = backend.build_mlp(MLP)
    backend.forward(model, book_input(MLP))
    assert_equal(
        "grad before backward",
        backend.grad_state_before_backward(model),
        declaration(backend.name).fact("grad_state_before_backward"),
    )


@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_all_parameters_at_once(backend, model_name):
    spec = BOOK_SPECS[model_name]
    model = backend.build_mlp(spec)
    backend.forward(model, book_input(spec))
    listed = backend.list_params(model)
    assert_equal("names", [p.name for p in listed], list(BOOK_PARAM_SHAPES[model_name]), model_name)
    for param in listed:
        assert_equal(f"{param.name}.shape", param.shape, BOOK_PARAM_SHAPES[model_name][param.name])
        transposed = backend.to_canonical(param.name.rsplit(".", 1)[1], np.empty(param.native_shape)).shape
        assert_equal(
            f"{param.name}.native_shape as canonical",
            transposed,
            param.shape,
            f"native {param.native_name} in layout {backend.weight_layout}",
        )
        assert_equal(f"{param.name}.dtype", param.dtype, "float32")
        assert param.native_name, f"{param.name}.native_name is empty"
    native_names = [p.native_name for p in listed]
    assert_equal("distinct native names", len(set(native_names)), len(native_names), str(native_names))


@pytest.mark.parametrize("block", sorted(NEST_LEVELS))
def test_nested_names_level_by_level(backend, block):
    """NestMLP: walking one block down at a time reaches exactly its children."""
    model, weights = loaded_model(backend, NEST)
    listed = [p.name for p in backend.list_params(model)]
    depth = block.count(".") + 1
    children = sorted(
        {
            ".".join(name.split(".")[: depth + 1])
            for name in listed
            if name.startswith(block + ".") and name.count(".") > depth
        }
    )
    assert_equal(f"children of {block}", tuple(children), NEST_LEVELS[block])
    for child in children:
        for name in listed:
            if name.startswith(child + "."):
                assert_close(name, backend.get_param(model, name), weights[name], f"under {child}")


def test_nested_layer_access_by_path(backend):
    model, weights = loaded_model(backend, NEST)
    params = backend.layer(model, (0, 0, 2))
    assert_close(f"{layer_name((0, 0, 2))}.weight", params.weight, weights["layers.0.0.2.weight"])


def test_unknown_position_is_a_key_error(backend):
    model, _ = loaded_model(backend, MLP)
    with pytest.raises(KeyError, match="layers.1.weight"):
        backend.get_param(model, "layers.1.weight")  # position 1 is a ReLU
