"""D2L 6.6, file I/O: the framework's own save and load of parameters (torch.save(net.state_dict()),
save_parameters, save_weights, Flax's serialization...), as the book uses them: the file holds the
parameters, not the architecture, so a clone is built in code and then reads the file, and
``Y_clone == Y`` holds exactly, not merely within a tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from common.core.models import BOOK_SPECS, CUSTOM_TIED, MLP, NEST, TIED
from common.errors import ParamFileError
from tests.conformance.fixtures import book_input, loaded_model
from tests.helpers import assert_equal

CLONED = {**BOOK_SPECS, CUSTOM_TIED.name: CUSTOM_TIED}


def _saved(backend, spec, folder):
    model, _ = loaded_model(backend, spec, seed=2)
    backend.save_native_file(model, str(folder / "mlp"))
    return model


@pytest.mark.parametrize("model_name", sorted(CLONED))
def test_a_clone_loaded_from_the_framework_file_gives_identical_output(backend, tmp_path, model_name):
    spec = CLONED[model_name]
    capability = backend.declaration.capability("custom_layer")
    if spec.has_custom and not capability.value:
        pytest.skip(f"{backend.name} declares no custom layer: {capability.reason}")
    net = _saved(backend, spec, tmp_path)
    x = book_input(spec)
    y = backend.forward(net, x)
    clone = backend.build_mlp(spec)  # the architecture, again in code: its own default init
    backend.import_native_file(clone, str(tmp_path / "mlp"))
    y_clone = backend.forward(clone, x)
    assert_equal(
        "Y_clone == Y everywhere", bool(np.array_equal(y_clone, y)), True, f"Y={y}, Y_clone={y_clone}"
    )
    for name, value in backend.snapshot(net).items():
        np.testing.assert_array_equal(backend.get_param(clone, name), value, err_msg=name)


def test_the_file_holds_no_architecture_so_another_one_refuses_it(backend, tmp_path):
    """Only parameters are saved: the file of an MLP cannot make a NestMLP, whose code expects
    other entries; the refusal names the file and the model is left as it was."""
    _saved(backend, MLP, tmp_path)
    other, _ = loaded_model(backend, NEST, seed=1)
    before = backend.snapshot(other)
    with pytest.raises(ParamFileError, match="mlp"):
        backend.import_native_file(other, str(tmp_path / "mlp"))
    for name, value in before.items():
        np.testing.assert_array_equal(backend.get_param(other, name), value, err_msg=name)


def test_a_tie_comes_from_the_code_not_the_file(backend, tmp_path):
    """The clone's tie is its architecture's: after loading, a write at one tied position is
    seen at the other, whatever the file stored for each."""
    _saved(backend, TIED, tmp_path)
    clone = backend.build_mlp(TIED)
    backend.import_native_file(clone, str(tmp_path / "mlp"))
    value = backend.get_param(clone, "layers.2.weight").copy()
    value.flat[0] = 100.0
    backend.set_param(clone, "layers.2.weight", value)
    assert_equal("layers.4.weight[0]", float(backend.get_param(clone, "layers.4.weight").flat[0]), 100.0)
