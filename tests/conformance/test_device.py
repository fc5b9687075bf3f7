"""Parameters on a device (PARITY_DEVICE, default cpu): where each parameter lives, and that both
positions of a tie hold one buffer, compared by address rather than by value.

On a machine without CUDA the checks that need it skip with the reason "no CUDA device"; the
rest run on whatever device the backend was given, the CPU included.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.core import portable
from common.core.models import TIED
from common.core.oracle import Loss, initial_weights
from common.declarations import declaration
from tests.conformance.fixtures import book_input, loaded_model
from tests.helpers import assert_close, assert_equal


def _placement(backend) -> bool:
    capability = declaration(backend.name).capability("device_placement")
    if not capability.value:
        with pytest.raises(NotImplementedError):
            backend.param_location(backend.build_mlp(TIED), "layers.0.weight")
    return capability.value


def test_parameters_live_on_the_selected_device(backend):
    if not _placement(backend):
        return  # declared, with its reason, and checked above: no location to compare
    model, _ = loaded_model(backend, TIED)
    for param in TIED.params:
        kind, _ = backend.param_location(model, param.name)
        assert_equal(f"{param.name} device", kind, backend.device)


def test_both_positions_of_a_tie_hold_one_buffer(backend):
    if not _placement(backend):
        return
    model, _ = loaded_model(backend, TIED)
    backend.sgd_step(model, book_input(TIED), Loss(), 0.01)  # after an update, too
    for param in TIED.params:
        addresses = {backend.param_location(model, position)[1] for position in param.positions}
        assert_equal(f"buffers behind {param.positions}", len(addresses), 1, "a tie is one buffer")


def test_exported_files_read_back_on_the_cpu(backend, tmp_path):
    """Whatever the device, the portable file holds plain CPU data any reader can load."""
    model, weights = loaded_model(backend, TIED)
    path = tmp_path / "tied.safetensors"
    portable.export_params(backend, model, str(path))
    values, _ = portable.read_params(path, TIED)
    for name, value in values.items():
        assert isinstance(value, np.ndarray), f"{name} read back as {type(value).__name__}"
        assert_close(name, value, weights[name])


def test_cuda_when_asked(backend):
    """PARITY_DEVICE=cuda puts everything there; elsewhere this says why it cannot run."""
    reason = backend.available_devices().get("cuda", "no CUDA device")
    if reason:
        pytest.skip(f"no CUDA device: {reason}")
    assert_equal("device", backend.device in ("cpu", "cuda"), True)
    model, _ = loaded_model(backend, TIED)
    output = backend.forward(model, book_input(TIED))
    assert_equal("output shape", output.shape, (2, 1))
    assert initial_weights(TIED)  # the oracle's weights exist on the host whatever the device
