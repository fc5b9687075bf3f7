"""The generators and the tolerance rule of the property tests, framework-free; regression tests
for what they found in common/core/spec.py and common/core/oracle.py."""

from __future__ import annotations

import itertools
import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, find, given, settings
from hypothesis import strategies as st

from common.commands import fuzz_specs
from common.commands.testing import SuiteResult
from common.config import backend_names
from common.core import generate, oracle, portable
from common.core.generate import (
    Case,
    case_from_dict,
    cases,
    configured,
    invalid_inputs,
    invalid_specs,
    valid_specs,
)
from common.core.models import BOOK_SPECS, TIED
from common.core.oracle import Loss
from common.core.spec import (
    MAX_LAYERS,
    MAX_NESTING,
    BatchNorm,
    Block,
    Dense,
    Embedding,
    ModelSpec,
    NormSlot,
    ReLU,
    layer_name,
    param_name,
    spec_from_dict,
)
from common.errors import SpecError, UsageError
from tests.common.test_oracle import finite_difference

# Derandomized, as the properties run; find() shrinks within its example budget, hence a large one.
SEARCH = settings(database=None, max_examples=20_000, deadline=None, derandomize=True)


# == valid specs ==================================================================================
@configured
@given(case=cases())
def test_generated_specs_construct_and_round_trip(case):
    spec = case.spec
    assert 0 < len(spec.dense_slots) <= generate.MAX_DENSE
    assert 0 < spec.in_features <= generate.MAX_INPUT
    assert all(1 <= slot.units <= generate.MAX_WIDTH for slot in spec.dense_slots)
    assert 0 < case.batch <= generate.MAX_BATCH
    assert max(len(path) for path, _ in spec.walk()) <= generate.MAX_BLOCK_DEPTH + 1
    assert len(spec.ties) <= generate.MAX_TIE_GROUPS and all(len(g) in (2, 3) for g in spec.ties)
    walked = list(spec.walk())
    for (_, before), (path, layer) in itertools.pairwise([(None, None), *walked]):
        assert not isinstance(layer, BatchNorm) or isinstance(before, Dense), (
            f"{path}: a BatchNorm after {before}"
        )
    assert case.batch >= generate.MIN_BATCHNORM_BATCH or not spec.has_batchnorm, "a BatchNorm batch too small"
    for path, layer in walked:
        assert not isinstance(layer, Embedding) or path == walked[0][0], f"{path}: an Embedding not first"
    if spec.embed_slot is not None:
        assert spec.in_features == spec.embed_slot.vocab and len(spec.embed_slot.readers) <= 1
        assert spec.embed_slot.vocab >= 2 or not spec.has_batchnorm, "one id makes a constant feature"
    assert any(p.trainable for p in spec.params), "something trains"
    text = case.to_json()
    assert case_from_dict(json.loads(text)) == case
    assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@configured
@given(spec=valid_specs())
def test_unique_parameters_follow_from_the_ties(spec):
    """spec.params, derived independently: each group's first position (in walk order) owns it;
    a Dense and a BatchNorm each hold a weight and a bias; an Embedding holds its table, which a
    Dense tied to it reads as its weight (its position listed after the table's), with a bias of
    its own."""
    owner = {path: group[0] for group in spec.ties for path in group}
    holders = [path for path, layer in spec.walk() if isinstance(layer, Embedding | Dense | BatchNorm)]
    kinds = dict(spec.walk())
    table = next((path for path in holders if isinstance(kinds[path], Embedding)), None)
    expected = []
    for path in holders:
        if isinstance(kinds[path], Embedding):  # its table, read by the Dense layers tied to it
            readers = tuple(param_name(p, "weight") for p in holders if owner.get(p) == path != p)
            expected.append((param_name(path, "weight"), (param_name(path, "weight"), *readers)))
            continue
        for role in ("weight", "bias"):
            if owner.get(path, path) == table and role == "weight":
                continue  # the table is this Dense's weight; its bias is its own
            if owner.get(path, path) == path or owner.get(path) == table:
                users = (p for p in holders if p == path or owner.get(p) == path != table)
                expected.append((param_name(path, role), tuple(param_name(p, role) for p in users)))
    assert [(p.name, p.positions) for p in spec.params] == expected


def _crosses_blocks(spec: ModelSpec) -> bool:
    return any(len({path[:-1] for path in group}) > 1 for group in spec.ties)


COVERAGE = {
    "a tie crossing a block boundary": _crosses_blocks,
    "three tie groups": lambda s: len(s.ties) == 3,
    "a tie of three positions": lambda s: any(len(g) == 3 for g in s.ties),
    "blocks nested three deep": lambda s: max(len(p) for p, _ in s.walk()) == 4,
    "eight Dense layers": lambda s: len(s.dense_slots) == 8,
    "width 64": lambda s: any(slot.units == 64 for slot in s.dense_slots),
    "32 input features": lambda s: s.in_features == 32,
    "a leading ReLU": lambda s: isinstance(next(s.walk())[1], ReLU),
    "two ReLUs in a row": lambda s: any(
        isinstance(a[1], ReLU) and isinstance(b[1], ReLU) for a, b in itertools.pairwise(s.walk())
    ),
    "a tied first layer (in_features in the tie)": lambda s: any(
        g[0] == s.dense_slots[0].path for g in s.ties
    ),
    "no BatchNorm": lambda s: not s.has_batchnorm,
    "a BatchNorm at the framework's defaults": lambda s: any(
        slot.layer.momentum is None and slot.layer.eps is None for slot in s.norm_slots
    ),
    "a BatchNorm with momentum and eps set": lambda s: any(
        slot.layer.momentum is not None and slot.layer.eps is not None for slot in s.norm_slots
    ),
    "a frozen Dense": lambda s: any(not p.trainable and p.kind == "dense" for p in s.params),
    "a frozen BatchNorm": lambda s: any(not slot.layer.trainable for slot in s.norm_slots),
    "a frozen layer in a tie": lambda s: any(not s.trainable_at(g[0]) for g in s.ties),
    "a tie of BatchNorms": lambda s: any(slot.tied for slot in s.norm_slots),
    "a tie of three BatchNorms": lambda s: any(
        len(g) == 3 and isinstance(s._slot_by_path[g[0]], NormSlot) for g in s.ties
    ),
    "Dense and BatchNorm ties together": lambda s: (
        any(slot.tied for slot in s.norm_slots) and any(slot.tied for slot in s.dense_slots)
    ),
    "an Embedding": lambda s: s.embed_slot is not None,
    "a transposed tie (a Dense reading the table)": lambda s: bool(s.embed_slot and s.embed_slot.readers),
    "a frozen transposed tie": lambda s: (
        bool(s.embed_slot and s.embed_slot.readers) and not s.embed_slot.trainable
    ),
    "a transposed tie beside a Dense tie": lambda s: (
        bool(s.embed_slot and s.embed_slot.readers) and any(slot.tied for slot in s.dense_slots)
    ),
    "an Embedding and a BatchNorm": lambda s: s.embed_slot is not None and s.has_batchnorm,
    "an Embedding inside a block": lambda s: s.embed_slot is not None and len(s.embed_slot.path) > 1,
    "adjacent tied layers (square)": lambda s: any(
        (a.path, b.path) in {(g[i], g[j]) for g in s.ties for i in range(len(g)) for j in range(len(g))}
        for a, b in itertools.pairwise(s.dense_slots)
    ),
}


@pytest.fixture(scope="module")
def sample() -> list[Case]:
    """400 derandomized cases, drawn the way the properties draw theirs."""
    drawn: list[Case] = []

    @settings(max_examples=400, derandomize=True, database=None, deadline=None)
    @given(case=cases())
    def collect(case):
        drawn.append(case)

    collect()
    return drawn


@pytest.mark.parametrize("what", sorted(COVERAGE))
def test_the_generator_reaches(sample, what):
    assert any(COVERAGE[what](case.spec) for case in sample), what


def test_the_generator_reaches_the_largest_batch(sample):
    assert any(case.batch == generate.MAX_BATCH for case in sample)


def test_a_failing_case_shrinks_to_the_smallest_tied_model():
    smallest = find(cases(), lambda case: any(slot.tied for slot in case.spec.dense_slots), settings=SEARCH)
    assert smallest.to_dict() == {
        "spec": {
            "name": "generated",
            "in_features": 1,
            "layers": [{"kind": "dense", "units": 1}, {"kind": "dense", "units": 1}],
            "ties": [[[0], [1]]],
        },
        "batch": 1,
        "loss": "sum",
    }


def test_a_failing_case_shrinks_to_the_smallest_tied_batchnorm_model():
    """Two Dense layers of width 1 each followed by a BatchNorm at its defaults, the BatchNorms
    tied, on the smallest batch a BatchNorm takes."""
    smallest = find(cases(), lambda case: any(slot.tied for slot in case.spec.norm_slots), settings=SEARCH)
    dense, norm = {"kind": "dense", "units": 1}, {"kind": "batchnorm"}
    assert smallest.to_dict() == {
        "spec": {
            "name": "generated",
            "in_features": 1,
            "layers": [dense, norm, dense, norm],
            "ties": [[[1], [3]]],
        },
        "batch": generate.MIN_BATCHNORM_BATCH,
        "loss": "sum",
    }


def test_a_failing_case_shrinks_to_the_smallest_transposed_tie():
    """One id, one dimension: an Embedding(1, 1) whose table the one Dense reads."""
    smallest = find(
        cases(), lambda case: bool(case.spec.embed_slot and case.spec.embed_slot.readers), settings=SEARCH
    )
    assert smallest.to_dict() == {
        "spec": {
            "name": "generated",
            "in_features": 1,
            "layers": [{"kind": "embedding", "vocab": 1, "dim": 1}, {"kind": "dense", "units": 1}],
            "ties": [[[0], [1]]],
        },
        "batch": 1,
        "loss": "sum",
    }


def test_materials_repeat_ids(sample):
    """The lookup's gradient is a scatter-add: a repeated id is what tests its accumulation."""
    inputs = [case.materials().x for case in sample if case.spec.embed_slot is not None]
    repeated = [x for x in inputs if len(np.unique(x)) < len(x)]
    assert len(repeated) >= len(inputs) // 4, f"{len(repeated)} of {len(inputs)} repeat an id"


def test_a_failing_case_shrinks_to_the_smallest_frozen_model():
    """Something must train, so the smallest frozen model is two layers of width 1, one of them
    frozen: a Dense and a Dense (batch 1), or a Dense and a BatchNorm at its defaults (batch
    MIN_BATCHNORM_BATCH).
    Each is minimal, and which one the search meets first varies."""
    smallest = find(cases(), lambda case: case.spec.has_frozen, settings=SEARCH).to_dict()
    spec = smallest["spec"]
    assert len(spec["layers"]) == 2, smallest
    first, second = spec["layers"]
    plain = [{k: v for k, v in layer.items() if k != "trainable"} for layer in (first, second)]
    assert plain[0] == {"kind": "dense", "units": 1}, smallest
    assert plain[1] in ({"kind": "dense", "units": 1}, {"kind": "batchnorm"}), smallest
    assert [layer.get("trainable", True) for layer in (first, second)].count(False) == 1, smallest
    batch = generate.MIN_BATCHNORM_BATCH if plain[1]["kind"] == "batchnorm" else 1
    assert (spec["in_features"], spec["ties"], smallest["batch"], smallest["loss"]) == (1, [], batch, "sum")


@pytest.mark.parametrize("missing", ["batchnorm", "freezing", "embedding", "all three"])
def test_a_backend_without_a_capability_gets_no_spec_that_needs_it(missing):
    capabilities = {
        name: missing not in (name, "all three") for name in ("batchnorm", "freezing", "embedding")
    }

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(
        case=cases(**capabilities),
        invalid=invalid_inputs(**capabilities),
    )
    def check(case, invalid):
        for spec in (case.spec, invalid.spec):
            assert set(spec.needs) <= {name for name, built in capabilities.items() if built}, spec.needs

    check()


def test_materials_are_deterministic():
    case = Case(TIED, 3, "mse")
    a, b = case.materials(), case_from_dict(json.loads(case.to_json())).materials()
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.loss.target, b.loss.target)
    assert a.x.dtype == np.float32 and a.x.shape == (3, 4)


# == invalid specs ================================================================================
@configured
@given(invalid=invalid_specs())
def test_invalid_specs_raise_one_line_spec_errors(invalid):
    with pytest.raises(SpecError) as info:
        spec_from_dict(invalid.data)
    message = str(info.value)
    assert type(info.value) is SpecError
    assert re.search(invalid.message, message), (message, invalid.message, invalid.reason)
    assert len(message.splitlines()) == 1, message


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
LAYER = st.fixed_dictionaries(
    {"kind": st.sampled_from(["dense", "relu", "block", "conv"])},
    optional={"units": JSON, "layers": JSON, "label": JSON},
)
SPEC_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "name": JSON,
        "in_features": JSON,
        "layers": st.lists(LAYER | JSON, max_size=5) | JSON,
        "ties": st.lists(st.lists(JSON | st.integers(0, 5), max_size=3), max_size=3) | JSON,
    },
)


@configured
@given(data=SPEC_LIKE | JSON)
def test_any_json_is_a_spec_or_a_one_line_spec_error(data):
    """Whatever JSON arrives (a spec file, a parameter file's metadata), spec_from_dict returns a
    spec or raises SpecError with one line: never another exception."""
    try:
        spec = spec_from_dict(data)
    except SpecError as error:
        assert len(str(error).splitlines()) == 1, str(error)
    else:
        assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# -- regressions: spec.py limits (deep nesting was a RecursionError, not a SpecError) -----------
def _nested(depth: int, units: int = 2) -> dict:
    layer = {"kind": "dense", "units": units}
    for _ in range(depth):
        layer = {"kind": "block", "label": "", "layers": [layer]}
    return {"name": "deep", "in_features": 2, "layers": [layer], "ties": []}


def test_nesting_far_past_the_limit_is_a_spec_error_not_a_recursion_error():
    with pytest.raises(SpecError, match=f"nested inside {MAX_NESTING + 1} blocks, but at most {MAX_NESTING}"):
        spec_from_dict(_nested(5000))


def test_a_deep_spec_built_in_python_is_a_spec_error_too():
    layer = Dense(2)
    for _ in range(5000):
        layer = Block((layer,))
    with pytest.raises(SpecError, match=f"at most {MAX_NESTING} are allowed"):
        ModelSpec("deep", 2, (layer,))


def test_a_spec_at_the_nesting_limit_survives_a_parameter_file(tmp_path):
    """MAX_NESTING fits inside the JSON depth limit of the spec stored in a portable file."""
    spec = spec_from_dict(_nested(MAX_NESTING))
    weights = oracle.initial_weights(spec)
    path = portable.write_portable(tmp_path / "deep.safetensors", spec, weights)
    values, _ = portable.read_params(path, spec)
    assert sorted(values) == sorted(weights)


def test_the_layer_count_limit():
    layers = [{"kind": "dense", "units": 1}] * MAX_LAYERS
    assert len(spec_from_dict({"in_features": 1, "layers": layers}).dense_slots) == MAX_LAYERS
    with pytest.raises(SpecError, match=f"layer layers.{MAX_LAYERS}: more than {MAX_LAYERS} layers"):
        spec_from_dict({"in_features": 1, "layers": layers + [{"kind": "relu"}]})
    with pytest.raises(SpecError, match=f"more than {MAX_LAYERS} layers"):
        ModelSpec("long", 1, (Dense(1),) * (MAX_LAYERS + 1))


def test_a_tie_path_longer_than_any_layer_is_refused_before_it_is_printed():
    with pytest.raises(SpecError, match="tie position of 100000 indices") as info:
        spec_from_dict(
            {"in_features": 2, "layers": [{"kind": "dense", "units": 2}], "ties": [[0, [0] * 100000]]}
        )
    assert len(str(info.value)) < 200


# -- regression: a position twice in one group said "appears in more than one tie" ---------------
def test_a_position_twice_in_one_tie_group_is_named_as_such():
    data = {"in_features": 2, "layers": [{"kind": "dense", "units": 2}] * 3, "ties": [[1, 1]]}
    with pytest.raises(SpecError, match=r"tie group \[\[1\], \[1\]\] lists layers.1 twice"):
        spec_from_dict(data)


# -- regression: a wrong input width was numpy's matmul message from inside the oracle ------------
@pytest.mark.parametrize("shape", [(2, 5), (4,), (2, 4, 1), (2, 3), (0, 4)])
def test_the_oracle_names_a_wrong_input_width(shape):
    spec = BOOK_SPECS["tied"]
    weights = oracle.initial_weights(spec)
    x = np.zeros(shape, np.float32)
    expected = re.escape(
        f"input x.shape={shape}, but should be (batch >= 1, 4): spec 'tied' takes in_features=4"
    )
    with pytest.raises(ValueError, match=expected):
        oracle.forward(spec, weights, x)
    with pytest.raises(ValueError, match=expected):
        oracle.backward(spec, weights, x, Loss())


# == the oracle against finite differences, on generated tied specs ================================
@settings(
    max_examples=8, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
@given(case=cases(min_ties=1))
def test_oracle_gradients_match_finite_differences_on_generated_tied_specs(case):
    spec = case.spec
    assume(sum(int(np.prod(shape)) for shape in spec.param_shapes.values()) <= 600)
    materials = case.materials()
    weights, x, loss = materials.weights, materials.x, materials.loss
    _, tape_ok = _kink_clearance(spec, weights, x)
    assume(tape_ok)  # a central difference of step 1e-6 must not straddle a ReLU kink
    result = oracle.backward(spec, weights, x, loss)
    for name in spec.param_shapes:
        numeric = finite_difference(spec, weights, x, loss, name, mode="training")
        np.testing.assert_allclose(result.grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


def _kink_clearance(spec: ModelSpec, weights, x, margin: float = 1e-4):
    """(smallest nonzero ReLU input of a training pass, whether it is above ``margin``)."""
    smallest = np.inf
    x = np.asarray(x) if spec.input_kind == "ids" else np.asarray(x, np.float64)
    for _, layer, inputs, _ in oracle.run(spec, weights, x, mode="training").tape:
        if isinstance(layer, ReLU):
            nonzero = np.abs(inputs[inputs != 0])
            smallest = min(smallest, float(nonzero.min())) if nonzero.size else smallest
    return smallest, smallest > margin


# == the tolerance rule, against a second float32 implementation (numpy's) =======================
def _float32_pass(
    spec: ModelSpec, weights, state, x, loss, mode, conventions, variance="two-pass", uses=None
):
    """The oracle's algorithm, every operation in float32 (numpy's BLAS sums in its own order):
    output, loss, gradients, and the running statistics after the pass. A BatchNorm's batch
    variance is the two-pass mean((h - mean)**2) or the one-pass mean(h**2) - mean**2 (Flax's
    fast variance, which cancels). The statistics are updated in the order the oracle applied
    them (which uses, in which order, is the conventions' business, not rounding's)."""
    f32 = np.float32
    done = oracle.run(spec, weights, x, state, mode, conventions, uses)
    owners = {s.path: s.owner for s in spec.layer_slots}
    saved = {path: record for path, _, _, record in done.tape}
    h, tape, batch_stats = (np.asarray(x) if spec.input_kind == "ids" else np.asarray(x, f32)), [], {}

    def param(path, role):  # a Dense tied to the table reads it as its weight
        return spec.owner_of(param_name(path, role))

    for path, layer in spec.walk():
        tape.append((path, layer, h))
        owner = layer_name(owners[path]) if path in owners else ""
        if isinstance(layer, Embedding):
            h = weights[f"{owner}.weight"][h]
        elif isinstance(layer, Dense):
            h = h @ weights[param(path, "weight")].T + weights[param(path, "bias")]
        elif isinstance(layer, BatchNorm):
            eps = f32(conventions.settings(layer)[1])
            if saved[path].batch_stats:
                mean = h.mean(axis=0, dtype=f32)
                if variance == "two-pass":
                    var = ((h - mean) ** 2).mean(axis=0, dtype=f32)
                else:
                    var = np.maximum((h * h).mean(axis=0, dtype=f32) - mean * mean, f32(0))
                n = f32(len(h))
                stored = var * n / (n - f32(1)) if conventions.unbiased_running_var and len(h) > 1 else var
                batch_stats[path] = (mean, stored)
            else:
                debias = f32(1)
                if saved[path].uses:
                    momentum = f32(1) - f32(conventions.settings(layer)[0])
                    debias = f32(1) - momentum ** f32(saved[path].uses)
                mean = state[f"{owner}.running_mean"] / debias
                var = state[f"{owner}.running_var"] / debias
            inv = f32(1) / np.sqrt(var + eps)
            h = (h - mean) * inv * weights[f"{owner}.weight"] + weights[f"{owner}.bias"]
            tape[-1] = (path, layer, tape[-1][2], (mean, inv))
        else:
            h = np.maximum(h, f32(0))
    y = h
    if loss.kind == "sum":
        value, g = np.sum(y, dtype=f32), np.ones_like(y)
    else:
        residual = y - loss.target
        value, g = np.mean(residual * residual, dtype=f32), (f32(2) * residual / f32(y.size)).astype(f32)
    grads = {name: np.zeros(shape, f32) for name, shape in spec.param_shapes.items()}
    for path, layer, inputs, *norm in reversed(tape):
        owner = layer_name(owners[path]) if path in owners else ""
        if isinstance(layer, Embedding):
            np.add.at(grads[f"{owner}.weight"], inputs, g)
        elif isinstance(layer, Dense):
            grads[param(path, "weight")] += g.T @ inputs
            grads[param(path, "bias")] += g.sum(axis=0)
            g = g @ weights[param(path, "weight")]
        elif isinstance(layer, BatchNorm):
            mean, inv = norm[0]
            z = (inputs - mean) * inv
            grads[f"{owner}.weight"] += (g * z).sum(axis=0)
            grads[f"{owner}.bias"] += g.sum(axis=0)
            d = g * weights[f"{owner}.weight"]
            if saved[path].batch_stats:
                n = f32(len(g))
                g = inv / n * (n * d - d.sum(axis=0) - z * (d * z).sum(axis=0))
            else:
                g = d * inv
        else:
            g = g * (inputs > 0)
    running = {name: np.asarray(value, f32) for name, value in state.items()}
    for update in done.updates:
        mean, stored = batch_stats[update.path]
        m = f32(update.momentum)
        for role, statistic in (("running_mean", mean), ("running_var", stored)):
            name = f"{update.owner}.{role}"
            running[name] = (f32(1) - m) * running[name] + m * statistic
    return y, float(value), grads, running


def _calibrate(case: Case, conventions: oracle.Conventions, variance: str) -> tuple[float, str]:
    """Checks numpy's float32 against the bounds of a training pass, an inference pass, and an
    inference pass after three training passes (debiased where the conventions say); returns the
    largest error in units of sigma, and where (a sigma of 0 needs an exact value)."""
    spec = case.spec
    materials = case.materials(conventions)
    assume(not materials.risky)
    worst = (0.0, "")

    def within(name, actual, expected, tolerance):
        nonlocal worst
        delta = np.abs(np.asarray(actual, np.float64) - expected)
        assert np.all(delta <= tolerance), f"{name}: {delta.max():.3g} past {tolerance.max():.3g}"
        sigma = np.broadcast_to(np.asarray(tolerance, np.float64) / generate.SIGMAS, delta.shape)
        ratio = float((delta[sigma > 0] / sigma[sigma > 0]).max(initial=0.0))
        worst = max(worst, (ratio, f"{name} ({mode}{', debiased' if uses else ''})"))

    args = (spec, materials.weights, materials.x, materials.loss)
    trained = oracle.backward(*args, state=materials.state, conventions=conventions)
    # Inference as the property test's last check reads it: after three training passes.
    after = {name: 3 * count for name, count in trained.uses.items()}
    for mode, uses in (("training", None), ("inference", None), ("inference", after)):
        bounds = generate.bounds(*args, state=materials.state, mode=mode, conventions=conventions, uses=uses)
        y, value, grads, running = _float32_pass(
            spec,
            materials.weights,
            materials.state,
            materials.x,
            materials.loss,
            mode,
            conventions,
            variance,
            uses,
        )
        reference = oracle.backward(
            *args, state=materials.state, mode=mode, conventions=conventions, uses=uses
        )
        within("output", y, reference.output, bounds.output)
        within("loss", value, reference.loss, bounds.loss)
        for name, grad in grads.items():
            within(f"grad {name}", grad, reference.grads[name], bounds.grads[name])
        for name, value in running.items():
            within(name, value, reference.state[name], bounds.state[name])
        lr = 0.1
        step = bounds.step(materials.weights, reference.grads, lr)
        for name, grad in grads.items():
            stepped = materials.weights[name] - np.float32(lr) * grad
            expected = materials.weights[name] - lr * reference.grads[name]
            assert np.all(np.abs(stepped - expected) <= step[name]), name
    return worst


# Conventions the calibration runs under: torch's (the default), Keras' (frozen BatchNorms in
# inference mode, eps 1e-3), MXNet's (statistics in the backward pass), Equinox's (debiased reads).
CALIBRATION_CONVENTIONS = {
    "equinox": oracle.Conventions(momentum=0.01, unbiased_running_var=False, inference_debias="use_count"),
    "torch": oracle.Conventions(),
    "keras": oracle.Conventions(
        momentum=0.01, eps=1e-3, unbiased_running_var=False, frozen_batchnorm="inference"
    ),
    "mxnet": oracle.Conventions(unbiased_running_var=False, statistics_update="backward"),
}
# The most sigma float32 numpy may reach, per batch variance formula (see test_properties' docstring
# for what was measured): the two-pass one as Dense layers alone, the cancelling one-pass formula
# keeping a margin of 2 below the tolerance.
CALIBRATED_SIGMA = {"two-pass": 2.0, "one-pass": generate.SIGMAS / 2}


@pytest.mark.parametrize("variance", sorted(CALIBRATED_SIGMA))
@pytest.mark.parametrize("conventions", sorted(CALIBRATION_CONVENTIONS))
def test_float32_numpy_stays_within_the_tolerance_rule(conventions, variance):
    worst: list[tuple[float, str]] = []

    @settings(max_examples=100, derandomize=True, deadline=None, database=None)
    @given(case=cases())
    def calibrate(case):
        worst.append(_calibrate(case, CALIBRATION_CONVENTIONS[conventions], variance))

    calibrate()
    ratio, where = max(worst)
    assert ratio <= CALIBRATED_SIGMA[variance], f"{ratio:.2f} sigma at {where}"


@pytest.mark.parametrize("name", sorted(BOOK_SPECS))
@pytest.mark.parametrize("loss_kind", ["sum", "mse"])
def test_the_rule_is_tight_on_the_book_models(name, loss_kind):
    """Not vacuous: the tolerance is a small fraction of every value it guards."""
    materials = Case(BOOK_SPECS[name], 2, loss_kind).materials()
    weights, x, loss, bounds = materials.weights, materials.x, materials.loss, materials.training
    reference = oracle.backward(BOOK_SPECS[name], weights, x, loss)
    assert bounds.output.max() <= 1e-4 * np.abs(reference.output).max()
    for grad_name, grad in reference.grads.items():
        assert bounds.grads[grad_name].max() <= 1e-3 * np.abs(grad).max(), grad_name


def test_a_one_percent_error_in_a_tied_gradient_is_caught():
    materials = Case(TIED, 4, "mse").materials()
    weights, x, loss, bounds = materials.weights, materials.x, materials.loss, materials.training
    grad = oracle.backward(TIED, weights, x, loss).grads["layers.2.weight"]
    assert np.any(np.abs(0.01 * grad) > bounds.grads["layers.2.weight"])


# == the budget =====================================================================================
def test_budget_reads_its_two_variables():
    assert generate.budget({}) == generate.Budget(generate.DEFAULT_EXAMPLES, None)
    assert generate.budget({"PARITY_EXAMPLES": " 500 ", "PARITY_SEED": "7"}) == generate.Budget(500, 7)


@pytest.mark.parametrize(
    "environ", [{"PARITY_EXAMPLES": "0"}, {"PARITY_EXAMPLES": "many"}, {"PARITY_SEED": "-1"}]
)
def test_a_bad_budget_names_the_variable(environ):
    (name,) = environ
    with pytest.raises(UsageError, match=f"{name}="):
        generate.budget(environ)


# == make fuzz's parser ==============================================================================
PYTEST_OUTPUT = """
=================================== FAILURES ===================================
_________________________ test_gradients_match_oracle __________________________
>           assert_within(f"grad {name}", grads[name], value, bounds.grads[name], f"{loss.kind} loss")
E           AssertionError: grad layers.0.weight[0, 0]=-0.18, but should be -0.17 within 1.6e-06
E           Failing test case: test_gradients_match_oracle(
E           )
E           PARITY-CASE {"batch": 1, "loss": "sum", "spec": {"in_features": 1, "layers": []}}
________________ test_invalid_spec_fails_before_the_framework _________________
E   AssertionError: adapter calls=['new_dense'], but should be []
PARITY-CASE {"in_features": 0}
"""


def test_fuzz_specs_collects_each_counterexample_with_its_test():
    found = fuzz_specs.counterexamples(PYTEST_OUTPUT)
    assert [(c.test, c.case) for c in found] == [
        (
            "test_gradients_match_oracle",
            {"batch": 1, "loss": "sum", "spec": {"in_features": 1, "layers": []}},
        ),
        ("test_invalid_spec_fails_before_the_framework", {"in_features": 0}),
    ]
    assert found[0].error.startswith("AssertionError: grad layers.0.weight[0, 0]")


def test_fuzz_specs_and_the_generator_agree_on_the_marker_and_variables():
    assert fuzz_specs.CASE_MARKER == generate.CASE_MARKER
    assert (fuzz_specs.EXAMPLES_ENV, fuzz_specs.SEED_ENV) == (generate.EXAMPLES_ENV, generate.SEED_ENV)


def test_fuzz_specs_refuses_a_bad_count():
    with pytest.raises(UsageError, match="examples=0"):
        fuzz_specs.run(("torch",), 0, 0)


def test_fuzz_specs_reports_every_backend_and_fails_on_one(monkeypatch, capsys):
    """Suites run side by side; one failing backend (here, its environment missing) and one with a
    counterexample fail the run, and every backend still gets its line."""
    names = backend_names()[:3]
    seen_examples = []

    def fake_env(backend, quiet):
        if backend == names[0]:
            raise UsageError("no environment")
        return "python"

    def fake_suite(name, python, suite, flags, backend, timeout, capture):
        seen_examples.append((os.environ[fuzz_specs.EXAMPLES_ENV], timeout))
        failed = name == names[1]
        output = PYTEST_OUTPUT if failed else ""
        return SuiteResult(name, {"passed": 1, "failed": int(failed)}, int(failed), 0.1, "", output)

    monkeypatch.setattr(fuzz_specs, "ensure_backend_env", fake_env)
    monkeypatch.setattr(fuzz_specs, "run_suite", fake_suite)
    assert fuzz_specs.run(names, 7, 0) == 1
    out = capsys.readouterr().out
    assert all(f"[{name}] " in out for name in names)
    assert f"FAILED: {names[0]}, {names[1]}" in out
    assert '"in_features": 0' in out  # the counterexample, as JSON
    assert seen_examples == [("7", fuzz_specs.default_timeout(7))] * 2
    assert fuzz_specs.default_timeout(10_000) == 10_000 * fuzz_specs.SECONDS_PER_EXAMPLE
