"""Non-trainable state and freezing: BatchNorm's running statistics and frozen layers, held to
the oracle under the conventions the backend declares ([facts] batchnorm_*, frozen_batchnorm).

A backend that declares no BatchNorm or no freezing skips these with its declared reason; the
refusal itself is checked in every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle
from common.core.expectations import STATE_ATOL, STATE_RTOL
from common.core.models import BATCHNORM, STATE_SPECS, TIED_BATCHNORM
from common.core.oracle import Loss
from common.core.spec import BatchNorm, Dense, ModelSpec
from common.declarations import declaration
from common.errors import ParamFileError, UsageError
from tests.conformance.fixtures import declared_conventions, recording
from tests.helpers import assert_close, assert_equal

SPECS = list(STATE_SPECS.values())
BATCH = 5
STEPS = 4
LR = 0.05


def _requires(backend, *capabilities: str) -> None:
    for capability in capabilities:
        declared = declaration(backend.name).capability(capability)
        if not declared.value:
            pytest.skip(f"{capability} is declared false: {declared.reason}")


def _loaded(backend, spec, seed: int = 0):
    """A model with the oracle's seeded parameters and seeded (non-trivial) running statistics."""
    model = backend.build_mlp(spec)
    weights, state = oracle.initial_weights(spec, seed), oracle.initial_state(spec, seed)
    backend.load_params(model, weights)
    backend.load_state(model, state)
    return model, weights, state


def _data(spec):
    x = oracle.sample_input(spec, batch=BATCH, seed=7)
    target = np.random.default_rng(8).uniform(-1, 1, size=(BATCH, spec.out_features)).astype(np.float32)
    return x, Loss("mse", target)


def _close(name, actual, expected, context=""):
    __tracebackhide__ = True
    assert_close(name, actual, expected, context, rtol=STATE_RTOL, atol=STATE_ATOL)


def _gradients_agree(backend, model, spec, weights, state, x, loss) -> None:
    """Training-mode gradients of the trainable parameters, and of no frozen one, as the oracle's."""
    __tracebackhide__ = True
    conventions = declared_conventions(backend)
    expected = oracle.backward(spec, weights, x, loss, state=state, conventions=conventions)
    grads = backend.backward(model, x, loss)
    trainable = sorted(p.name for p in spec.params if p.trainable)
    assert_equal("parameters with a gradient", sorted(grads), trainable, f"{spec.name}: none if frozen")
    for name in trainable:
        _close(f"grad {name}", grads[name], expected.grads[name], spec.name)


def _trains_as_the_oracle(backend, model, spec, weights, state, x, loss, context: str) -> None:
    """STEPS framework-SGD steps from ``weights`` and ``state``: losses, parameters and running
    statistics as the oracle's under the backend's declared conventions."""
    __tracebackhide__ = True
    conventions = declared_conventions(backend)
    trained = oracle.train(spec, weights, x, loss, LR, STEPS, state=state, conventions=conventions)
    actual_losses, _ = backend.train(model, x, loss, LR, STEPS)
    _close("losses", actual_losses, trained.losses, f"{spec.name}, {STEPS} SGD steps {context}")
    for name, value in (*trained.params.items(), *trained.state.items()):
        read = backend.get_state if name in trained.state else backend.get_param
        _close(name, read(model, name), value, f"{spec.name}, after {STEPS} steps {context}")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", oracle.MODES)
def test_forward_matches_the_oracle_in_each_mode(backend, spec, mode):
    """Inference normalizes by the running statistics and leaves them; training by the batch,
    updating them as the declared conventions say."""
    _requires(backend, "batchnorm")
    model, weights, state = _loaded(backend, spec)
    x, _ = _data(spec)
    conventions = declared_conventions(backend)
    expected = oracle.backward(spec, weights, x, Loss(), state=state, mode=mode, conventions=conventions)
    _close(f"net(X) in {mode} mode", backend.forward(model, x, mode=mode), expected.output, spec.name)
    for name, value in expected.state.items():
        _close(f"{name} after a {mode} forward", backend.get_state(model, name), value, spec.name)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_gradients_match_the_oracle_in_training_mode(backend, spec):
    _requires(backend, "batchnorm")
    model, weights, state = _loaded(backend, spec)
    _gradients_agree(backend, model, spec, weights, state, *_data(spec))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_training_follows_the_declared_conventions(backend, spec):
    """Several SGD steps: losses, parameters and running statistics agree with the oracle run
    under this backend's declared momentum, epsilon, running variance and frozen behaviour."""
    _requires(backend, "batchnorm", "freezing")
    model, weights, state = _loaded(backend, spec)
    _trains_as_the_oracle(backend, model, spec, weights, state, *_data(spec), "from the start")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_inference_after_training_uses_the_running_statistics(backend, spec):
    """After several SGD steps, inference normalizes by the running statistics as the declared
    convention reads them (as they are, or debiased by the layer's training uses): a check of its
    own, so a divergence here hides nothing of the training check above."""
    _requires(backend, "batchnorm", "freezing")
    model, weights, state = _loaded(backend, spec)
    x, loss = _data(spec)
    conventions = declared_conventions(backend)
    trained = oracle.train(spec, weights, x, loss, LR, STEPS, state=state, conventions=conventions)
    backend.train(model, x, loss, LR, STEPS)
    _close(
        "inference after training",
        backend.forward(model, x),
        oracle.forward(
            spec, trained.params, x, state=trained.state, conventions=conventions, uses=trained.uses
        ),
    )


def test_frozen_parameters_are_bit_identical_after_training(backend):
    _requires(backend, "batchnorm", "freezing")
    model, weights, _ = _loaded(backend, BATCHNORM)
    x, loss = _data(BATCHNORM)
    backend.train(model, x, loss, LR, STEPS)
    frozen = [p.name for p in BATCHNORM.params if not p.trainable]
    assert frozen, "the spec has a frozen layer"
    for name in frozen:
        assert np.array_equal(backend.get_param(model, name), weights[name]), f"{name} changed while frozen"
    moved = [
        p.name
        for p in BATCHNORM.params
        if p.trainable and not np.array_equal(backend.get_param(model, p.name), weights[p.name])
    ]
    assert moved, "nothing trained: the check above would pass vacuously"


def test_training_after_a_load_uses_the_values_loaded(backend):
    """A load between two trainings reaches the second, frozen values included: a compiled step
    that holds frozen arrays as constants must not keep the old ones."""
    _requires(backend, "batchnorm", "freezing")
    model, _, _ = _loaded(backend, BATCHNORM)
    x, loss = _data(BATCHNORM)
    backend.train(model, x, loss, LR, STEPS)  # compiled here, with the first values
    weights, state = oracle.initial_weights(BATCHNORM, seed=1), oracle.initial_state(BATCHNORM, seed=1)
    backend.load_params(model, weights)
    backend.load_state(model, state)
    _trains_as_the_oracle(backend, model, BATCHNORM, weights, state, x, loss, "after the load")


def test_nets_that_differ_only_in_what_is_frozen_each_follow_the_oracle(backend):
    """Two nets of one shape, frozen at different layers, in one process: a backend that caches
    compiled programs by architecture must tell them apart (a program shared by the two trains
    the other net's layer)."""
    _requires(backend, "freezing")
    nets = [
        ModelSpec(f"frozen-at-{k}", 3, tuple(Dense(3, trainable=i != k) for i in range(3))) for k in (0, 1)
    ]
    for spec in nets:
        model = backend.build_mlp(spec)
        weights = oracle.initial_weights(spec)
        backend.load_params(model, weights)
        x, loss = _data(spec)
        _gradients_agree(backend, model, spec, weights, None, x, loss)
        _trains_as_the_oracle(backend, model, spec, weights, None, x, loss, "beside the other")


@pytest.mark.parametrize("unset", ["momentum", "eps"])
def test_unset_settings_are_the_declared_defaults(backend, unset):
    """One training forward on x = [1, 2, 4, 8]: the running statistics show the default
    momentum, the variance convention, and (through the output) the default epsilon."""
    _requires(backend, "batchnorm")
    layer = (
        BatchNorm(eps=0.5) if unset == "momentum" else BatchNorm(momentum=0.25)
    )  # not 0.5: 1 - 0.5 would hide an untranslated momentum
    spec = ModelSpec(f"default-{unset}", 1, (layer, Dense(1)))
    model, weights, state = _loaded(backend, spec)
    x = np.array([[1.0], [2.0], [4.0], [8.0]], np.float32)
    expected = oracle.backward(
        spec, weights, x, Loss(), state=state, mode="training", conventions=declared_conventions(backend)
    )
    _close("net(X)", backend.forward(model, x, mode="training"), expected.output, f"{unset} unset")
    for name, value in expected.state.items():
        _close(name, backend.get_state(model, name), value, f"{unset} unset")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_state_is_listed_apart_from_parameters(backend, spec):
    _requires(backend, "batchnorm")
    model = backend.build_mlp(spec)
    state = backend.list_state(model)
    assert_equal("state names", [s.name for s in state], [s.name for s in spec.state])
    assert_equal("positions", [s.positions for s in state], [s.positions for s in spec.state])
    assert_equal(
        "parameter names", [p.name for p in backend.list_params(model)], [p.name for p in spec.params]
    )
    call, native = backend.state_listing(model)
    missing = [s.native_name for s in state if s.native_name not in native]
    assert_equal(f"state missing from {call}", missing, [])


def test_a_state_write_is_seen_at_every_position_of_a_tie(backend):
    _requires(backend, "batchnorm")
    model, _, state = _loaded(backend, TIED_BATCHNORM)
    value = state["layers.1.running_mean"] + 1.0
    backend.set_state(model, "layers.4.running_mean", value)
    _close(
        "layers.1.running_mean",
        backend.get_state(model, "layers.1.running_mean"),
        value,
        "written at layers.4",
    )


def test_a_bad_state_load_leaves_the_model_unchanged(backend):
    _requires(backend, "batchnorm")
    model, _, state = _loaded(backend, BATCHNORM)
    bad = dict(state)
    bad["layers.4.running_var"] = np.full(8, np.nan, np.float32)
    with pytest.raises(ParamFileError, match="NaN"):
        backend.load_state(model, bad)
    for name, value in state.items():
        assert np.array_equal(backend.get_state(model, name), value), name


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_a_spec_the_backend_cannot_build_is_refused_before_any_adapter_call(backend, spec):
    """What a backend declares it lacks is one UsageError naming the capability, with nothing
    built; what it declares it has builds."""
    entry = declaration(backend.name)
    lacking = [c for c in ("batchnorm", "freezing") if not entry.capability(c).value]
    needed = [c for c, used in (("batchnorm", spec.has_batchnorm), ("freezing", spec.has_frozen)) if used]
    refused = [c for c in needed if c in lacking]
    if not refused:
        model = backend.build_mlp(spec)
        assert_equal("state listed", len(backend.list_state(model)), len(spec.state))
        return
    with recording(backend) as calls, pytest.raises(UsageError, match=f"needs {refused[0]}"):
        backend.build_mlp(spec)
    assert_equal("adapter calls", calls, [])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_a_portable_file_carries_the_state(backend, spec, tmp_path):
    """Exported after training, imported into a fresh model: the same parameters, the same
    running statistics, the same inference output."""
    _requires(backend, "batchnorm", "freezing")
    from common.core import portable

    model, _, _ = _loaded(backend, spec)
    x, loss = _data(spec)
    backend.train(model, x, loss, LR, STEPS)
    path = portable.export_params(backend, model, tmp_path / f"{spec.name}.safetensors")
    _, state, _ = portable.read_portable(path, spec)
    assert_equal("state names in the file", sorted(state), sorted(spec.state_shapes))
    fresh = backend.build_mlp(spec)
    portable.import_params(backend, fresh, path)
    for name in spec.state_shapes:
        assert np.array_equal(backend.get_state(fresh, name), backend.get_state(model, name)), name
    _close("inference after import", backend.forward(fresh, x), backend.forward(model, x))
