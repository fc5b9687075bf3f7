"""Parameters on a device (PARITY_DEVICE, default cpu): where each parameter lives, and that both
positions of a tie hold one buffer, compared by address rather than by value.

On a machine without CUDA the checks that need it skip with the reason "no CUDA device"; the
rest run on whatever device the backend was given, the CPU included.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle, portable
from common.core.models import TIED
from common.core.oracle import Loss
from common.declarations import declaration
from tests.conformance.fixtures import book_input, loaded_model
from tests.helpers import assert_close, assert_equal


def _requires_placement(backend) -> None:
    capability = declaration(backend.name).capability("device_placement")
    if not capability.value:
        pytest.skip(f"device_placement is declared false: {capability.reason}")


def test_placement_is_as_declared(backend):
    """A backend that declares no placement raises NotImplementedError; one that declares it
    reports (device kind, nonzero address) for every parameter."""
    model, _ = loaded_model(backend, TIED)
    if not declaration(backend.name).capability("device_placement").value:
        with pytest.raises(NotImplementedError):
            backend.param_location(model, "layers.0.weight")
        return
    for param in TIED.params:
        kind, address = backend.param_location(model, param.name)
        assert_equal(
            f"{param.name} buffer address is an integer > 0", isinstance(address, int) and address > 0, True
        )


def test_parameters_live_on_the_selected_device(backend):
    _requires_placement(backend)
    model, _ = loaded_model(backend, TIED)
    for param in TIED.params:
        kind, _ = backend.param_location(model, param.name)
        assert_equal(f"{param.name} device", kind, backend.device)


def test_both_positions_of_a_tie_hold_one_buffer(backend):
    _requires_placement(backend)
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


def test_cuda_agrees_with_the_oracle(backend):
    """On CUDA, where the backend and its build can use it: the tied model's parameters live
    there, its forward pass and gradients agree with the oracle, and a tie is one buffer.
    Elsewhere this says why it cannot run."""
    reason = backend.available_devices().get("cuda", "no CUDA device")
    if reason:
        pytest.skip(f"no CUDA device: {reason}")
    previous = backend.device
    backend.use_device("cuda")
    try:
        model, weights = loaded_model(backend, TIED)
        x = book_input(TIED)
        reference = oracle.backward(TIED, weights, x, Loss())
        assert_close("net(X) on cuda", backend.forward(model, x), reference.output)
        grads = backend.backward(model, x, Loss())
        for name, grad in reference.grads.items():
            assert_close(f"grad {name} on cuda", grads[name], grad)
        if declaration(backend.name).capability("device_placement").value:
            for param in TIED.params:
                kinds = {backend.param_location(model, p)[0] for p in param.positions}
                addresses = {backend.param_location(model, p)[1] for p in param.positions}
                assert_equal(f"{param.name} device", kinds, {"cuda"})
                assert_equal(f"buffers behind {param.positions}", len(addresses), 1, "a tie is one buffer")
    finally:
        backend.use_device(previous)
