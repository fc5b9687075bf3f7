"""The oracle's own gradients, checked against central finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

from common.core import oracle
from common.core.models import BATCHNORM, BOOK_SPECS, TIED, TIED_BATCHNORM
from common.core.oracle import Conventions, Loss
from common.core.spec import BatchNorm, Dense, ModelSpec, ReLU
from common.declarations import BATCHNORM_FACTS


def finite_difference(spec, weights, x, loss, name, eps=1e-6, **forward):
    weights = {k: v.astype(np.float64) for k, v in weights.items()}
    grad = np.zeros_like(weights[name])
    for index in np.ndindex(grad.shape):
        original = weights[name][index]
        weights[name][index] = original + eps
        plus = loss.value(oracle.forward(spec, weights, x, **forward))
        weights[name][index] = original - eps
        minus = loss.value(oracle.forward(spec, weights, x, **forward))
        weights[name][index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.parametrize("loss_kind", ["sum", "mse"])
@pytest.mark.parametrize("model_name", ["mlp", "tied"])
def test_gradients_match_finite_differences(model_name, loss_kind):
    spec = BOOK_SPECS[model_name]
    weights = oracle.initial_weights(spec, seed=3)
    x = oracle.sample_input(spec, batch=3, seed=4)
    loss = Loss() if loss_kind == "sum" else Loss("mse", np.full((3, spec.out_features), 0.5))
    result = oracle.backward(spec, weights, x, loss)
    for name in spec.param_shapes:
        numeric = finite_difference(spec, weights, x, loss, name)
        np.testing.assert_allclose(result.grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


def test_nest_gradient_spot_check():
    spec = BOOK_SPECS["nest"]
    weights = oracle.initial_weights(spec)
    x = oracle.sample_input(spec)
    result = oracle.backward(spec, weights, x, Loss())
    numeric = finite_difference(spec, weights, x, Loss(), "layers.0.1.bias")
    np.testing.assert_allclose(result.grads["layers.0.1.bias"], numeric, rtol=1e-5, atol=1e-7)


def test_tied_gradient_is_the_sum_of_position_contributions():
    weights = oracle.initial_weights(TIED)
    x = oracle.sample_input(TIED)
    result = oracle.backward(TIED, weights, x, Loss())
    for role in ("weight", "bias"):
        parts = result.position_grads[f"layers.2.{role}"] + result.position_grads[f"layers.4.{role}"]
        np.testing.assert_allclose(result.grads[f"layers.2.{role}"], parts)
        assert not np.allclose(result.position_grads[f"layers.4.{role}"], 0)


def test_untied_with_expanded_weights_computes_the_same_function():
    weights = oracle.initial_weights(TIED)
    x = oracle.sample_input(TIED)
    untied = oracle.expand_tied(TIED, weights)
    np.testing.assert_allclose(oracle.forward(TIED, weights, x), oracle.forward(TIED.untied(), untied, x))


def test_initial_weights_are_seeded_float32():
    a, b = oracle.initial_weights(TIED, 0), oracle.initial_weights(TIED, 0)
    assert all(a[k].dtype == np.float32 and (a[k] == b[k]).all() for k in a)
    assert not np.array_equal(a["layers.0.weight"], oracle.initial_weights(TIED, 1)["layers.0.weight"])


def test_loss_validation():
    with pytest.raises(ValueError, match="kind='l1'"):
        Loss("l1")
    with pytest.raises(ValueError, match="needs a target"):
        Loss("mse")


# -- BatchNorm ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["training", "inference"])
@pytest.mark.parametrize("spec", [BATCHNORM, TIED_BATCHNORM], ids=lambda s: s.name)
def test_batchnorm_gradients_match_finite_differences(spec, mode):
    """Training mode differentiates through the batch statistics; inference through the running
    ones, which are constants (seeded, so not the trivial 0 and 1)."""
    weights = oracle.initial_weights(spec, seed=3)
    state = oracle.initial_state(spec, seed=3)
    x = oracle.sample_input(spec, batch=5, seed=4)
    loss = Loss("mse", np.full((5, spec.out_features), 0.5))
    result = oracle.backward(spec, weights, x, loss, state=state, mode=mode)
    for name in spec.param_shapes:
        numeric = finite_difference(spec, weights, x, loss, name, state=state, mode=mode)
        np.testing.assert_allclose(
            result.grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=f"{name} {mode}"
        )


BATCH = np.array([[1.0], [2.0], [4.0], [8.0]])  # one feature: mean 3.75, biased var 7.1875


@pytest.mark.parametrize("unbiased, expected", [(True, 7.1875 * 4 / 3), (False, 7.1875)])
def test_running_variance_follows_the_convention(unbiased, expected):
    """With momentum 1 the running statistics become the batch's: torch stores the unbiased
    variance (9.58 here), Keras and Flax the biased one (7.19)."""
    spec = ModelSpec("one", 1, (BatchNorm(momentum=1.0), Dense(1)))
    weights = oracle.initial_weights(spec)
    result = oracle.backward(
        spec, weights, BATCH, Loss(), conventions=Conventions(unbiased_running_var=unbiased)
    )
    np.testing.assert_allclose(result.state["layers.0.running_mean"], [3.75], rtol=1e-6)
    np.testing.assert_allclose(result.state["layers.0.running_var"], [expected], rtol=1e-6)


def test_momentum_is_the_weight_of_the_new_batch():
    spec = ModelSpec("one", 1, (BatchNorm(momentum=0.25), Dense(1)))
    result = oracle.backward(spec, oracle.initial_weights(spec), BATCH, Loss(), conventions=Conventions())
    np.testing.assert_allclose(result.state["layers.0.running_mean"], [0.75 * 0 + 0.25 * 3.75], rtol=1e-6)


def test_a_tied_batchnorm_updates_its_statistics_at_each_use_in_order():
    spec = TIED_BATCHNORM
    weights, x = oracle.initial_weights(spec), oracle.sample_input(spec, batch=4)
    conventions = Conventions(momentum=0.5)
    result = oracle.backward(spec, weights, x, Loss(), conventions=conventions)
    # By hand: the statistics after the first use, then the second from what reaches it.
    tape = oracle.run(spec, weights, x, None, "training", conventions).tape
    first, second = (inputs for path, layer, inputs, _ in tape if path in ((1,), (4,)))
    expected_mean = 0.5 * (0.5 * 0 + 0.5 * first.mean(axis=0)) + 0.5 * second.mean(axis=0)
    np.testing.assert_allclose(result.state["layers.1.running_mean"], expected_mean, rtol=1e-5)
    assert set(result.state) == {"layers.1.running_mean", "layers.1.running_var"}


def test_inference_uses_the_running_statistics_and_changes_none():
    spec = BATCHNORM
    weights, state = oracle.initial_weights(spec), oracle.initial_state(spec, seed=0)
    x = oracle.sample_input(spec, batch=4)
    result = oracle.backward(spec, weights, x, Loss(), state=state, mode="inference")
    assert all(np.array_equal(result.state[k], state[k]) for k in state)
    assert not np.allclose(result.output, oracle.forward(spec, weights, x, state=state, mode="training"))


@pytest.mark.parametrize("frozen_batchnorm", ["training", "inference"])
def test_training_never_moves_a_frozen_parameter(frozen_batchnorm):
    # A bias right before a BatchNorm gets no gradient in training mode (the batch mean removes
    # it), so a ReLU stands between them here.
    spec = ModelSpec(
        "frozen", 4, (Dense(8), ReLU(), BatchNorm(trainable=False), Dense(4), Dense(1, trainable=False))
    )
    weights, x = oracle.initial_weights(spec), oracle.sample_input(spec, batch=4)
    conventions = Conventions(frozen_batchnorm=frozen_batchnorm)
    _, after, state, _ = oracle.train(spec, weights, x, Loss(), 0.1, 3, conventions=conventions)
    for p in spec.params:
        moved = not np.array_equal(after[p.name], weights[p.name])
        assert moved is p.trainable, p.name
    stats_moved = not np.array_equal(
        state["layers.2.running_mean"], oracle.initial_state(spec)["layers.2.running_mean"]
    )
    assert stats_moved is (frozen_batchnorm == "training")


def test_batchnorm_specs_round_trip_through_data():
    for spec in (BATCHNORM, TIED_BATCHNORM):
        from common.core.spec import spec_from_dict

        assert spec_from_dict(spec.to_dict()) == spec


# -- when the statistics move, and how inference reads them ------------------------------------------
def test_the_declarable_conventions_are_the_oracles():
    """The values a declaration may state are the ones the oracle implements, no more."""
    assert BATCHNORM_FACTS["frozen_batchnorm"] == oracle.FROZEN_BATCHNORM
    assert BATCHNORM_FACTS["batchnorm_statistics_update"] == oracle.STATISTICS_UPDATE
    assert BATCHNORM_FACTS["batchnorm_inference_debias"] == oracle.INFERENCE_DEBIAS


def test_backward_updates_apply_the_last_use_first():
    """MXNet's convention: the statistics move in the backward pass, so the second use's batch is
    blended first and the first use's last; the forward output is the same either way."""
    spec = TIED_BATCHNORM
    weights, x = oracle.initial_weights(spec), oracle.sample_input(spec, batch=4)
    forward, backward = (
        Conventions(momentum=0.5, statistics_update=when) for when in ("forward", "backward")
    )
    tape = oracle.run(spec, weights, x, None, "training", forward).tape
    first, second = (inputs for path, layer, inputs, _ in tape if path in ((1,), (4,)))
    result = oracle.backward(spec, weights, x, Loss(), conventions=backward)
    expected_mean = 0.5 * (0.5 * 0 + 0.5 * second.mean(axis=0)) + 0.5 * first.mean(axis=0)
    np.testing.assert_allclose(result.state["layers.1.running_mean"], expected_mean, rtol=1e-5)
    np.testing.assert_array_equal(
        result.output, oracle.backward(spec, weights, x, Loss(), conventions=forward).output
    )


FROZEN_FIRST = ModelSpec(
    "frozen-first",
    4,
    (
        BatchNorm(trainable=False),
        Dense(4, trainable=False),
        BatchNorm(trainable=False),
        Dense(4),
        BatchNorm(trainable=False),
        Dense(1),
    ),
    ties=((2, 4),),
)


@pytest.mark.parametrize("when", ["forward", "backward"])
def test_backward_updates_need_a_use_the_backward_reaches(when):
    """Under "backward", a frozen BatchNorm with nothing trainable before it keeps its statistics
    (layers.0, and the tied layer's first use at layers.2); its use after a trainable Dense
    (layers.4) moves them. Under "forward" every training use moves them."""
    spec = FROZEN_FIRST
    weights, x = oracle.initial_weights(spec), oracle.sample_input(spec, batch=4)
    conventions = Conventions(momentum=0.5, statistics_update=when)
    start = oracle.initial_state(spec)
    result = oracle.backward(spec, weights, x, Loss(), conventions=conventions)
    moved = {name for name in start if not np.array_equal(result.state[name], start[name])}
    every = {"layers.0.running_mean", "layers.0.running_var", "layers.2.running_mean", "layers.2.running_var"}
    assert moved == (
        every if when == "forward" else every - {"layers.0.running_mean", "layers.0.running_var"}
    )
    tape = oracle.run(spec, weights, x, None, "training", conventions).tape
    third = next(inputs for path, _, inputs, _ in tape if path == (4,))
    if when == "backward":  # only the use at layers.4
        np.testing.assert_allclose(result.state["layers.2.running_mean"], 0.5 * third.mean(axis=0), rtol=1e-6)


def test_use_count_debiasing_divides_by_one_minus_the_old_weight_to_the_uses():
    """Equinox's convention: inference reads running / (1 - (1 - momentum) ** uses), each use of a
    tie counting; with no training use yet it reads them as they are."""
    spec = TIED_BATCHNORM
    weights, x = oracle.initial_weights(spec), oracle.sample_input(spec, batch=4)
    state = oracle.initial_state(spec, seed=2)
    debiased = Conventions(momentum=0.2, inference_debias="use_count")
    trained = oracle.train(spec, weights, x, Loss(), 0.1, 3, state=state, conventions=debiased)
    assert trained.uses == {"layers.1": 6}
    scale = 1 - 0.8**6
    by_hand = {name: value / scale for name, value in trained.state.items()}
    plain = Conventions(momentum=0.2)
    np.testing.assert_allclose(
        oracle.forward(spec, trained.params, x, state=trained.state, conventions=debiased, uses=trained.uses),
        oracle.forward(spec, trained.params, x, state=by_hand, conventions=plain),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        oracle.forward(spec, weights, x, state=state, conventions=debiased),
        oracle.forward(spec, weights, x, state=state, conventions=plain),
    )


def test_a_frozen_batchnorm_in_inference_mode_is_no_training_use():
    spec = BATCHNORM  # layers.4: a frozen BatchNorm
    weights, x = oracle.initial_weights(spec), oracle.sample_input(spec, batch=4)
    conventions = Conventions(frozen_batchnorm="inference", inference_debias="use_count")
    result = oracle.backward(spec, weights, x, Loss(), conventions=conventions)
    assert result.uses == {"layers.1": 1, "layers.4": 0}


def test_debiased_inference_gradients_match_finite_differences():
    spec = TIED_BATCHNORM
    weights, state = oracle.initial_weights(spec, seed=3), oracle.initial_state(spec, seed=3)
    x = oracle.sample_input(spec, batch=5, seed=4)
    loss = Loss("mse", np.full((5, spec.out_features), 0.5))
    forward = {"state": state, "mode": "inference", "uses": {"layers.1": 3}}
    forward["conventions"] = Conventions(inference_debias="use_count")
    result = oracle.backward(spec, weights, x, loss, **forward)
    for name in spec.param_shapes:
        numeric = finite_difference(spec, weights, x, loss, name, **forward)
        np.testing.assert_allclose(result.grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("name, value", [("statistics_update", "later"), ("inference_debias", "count")])
def test_an_unknown_convention_is_refused(name, value):
    with pytest.raises(ValueError, match=f"{name}='{value}', but should be one of"):
        Conventions(**{name: value})
