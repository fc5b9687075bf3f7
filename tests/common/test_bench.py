"""``make bench``'s training part, framework-free: which models every backend's bench trains, the
check that a hand-written loop computes what the adapter does before any ratio is taken, and the
table. The oracle stands in for a framework (trained in float64, as adapter and as loop alike);
nothing here is timed against anything."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.commands import bench
from common.commands.training import regression_data
from common.core import oracle
from common.core.models import BATCHNORM, EMBED_TIED, TIED
from common.core.oracle import Loss
from common.core.spec import BatchNorm, Dense, ModelSpec
from common.declarations import Capability, declarations
from tests.helpers import assert_equal


def test_every_backend_bench_trains_the_tied_the_batchnorm_and_the_embedding_model():
    assert_equal(
        "bench models",
        [spec.name for spec in bench.BENCH_MODELS],
        [TIED.name, BATCHNORM.name, EMBED_TIED.name],
    )
    for entry in declarations():
        assert_equal(
            f"{entry.name}'s bench models",
            bench.bench_models(entry),
            {"tied": TIED, "batchnorm": BATCHNORM, "embed_tied": EMBED_TIED},
        )


@pytest.mark.parametrize(
    ("capability", "left_out"), [("batchnorm", "batchnorm"), ("embedding", "embed_tied")]
)
def test_a_backend_lacking_a_capability_is_benched_without_the_model_that_needs_it_and_says_why(
    capability, left_out
):
    entry = declarations()[0]
    lacking = dataclasses.replace(
        entry, capabilities={**entry.capabilities, capability: Capability(False, "not built here")}
    )
    expected = {"tied": TIED, "batchnorm": BATCHNORM, "embed_tied": EMBED_TIED}
    expected[left_out] = f"{capability} is declared false: not built here"
    assert_equal("bench models", bench.bench_models(lacking), expected)


def test_the_embedding_model_trains_on_repeated_ids_and_the_others_on_make_trains_data():
    ids, targets = bench.bench_data(EMBED_TIED)
    assert_equal("ids", (ids.dtype, ids.shape), (np.dtype(np.int64), (64,)))
    assert 0 <= ids.min() and ids.max() < EMBED_TIED.embed_slot.vocab, (ids.min(), ids.max())
    assert len(set(ids.tolist())) < len(ids), "no id repeats: the table's scatter-add goes untested"
    assert_equal(
        "targets", (targets.dtype, targets.shape), (np.dtype(np.float32), (64, EMBED_TIED.out_features))
    )
    again = bench.bench_data(EMBED_TIED)
    assert np.array_equal(ids, again[0]) and np.array_equal(targets, again[1]), "not deterministic"
    for features, expected in zip(bench.bench_data(TIED), regression_data(TIED), strict=True):
        assert np.array_equal(features, expected), "the tied MLP's data is not make train's"


# -- the agreement check, on an oracle "framework" -----------------------------------------------------
class OracleBackend:
    """What measure_training calls of a backend, done by the oracle."""

    def build_mlp(self, spec: ModelSpec) -> dict:
        return {"spec": spec}

    def load_params(self, model: dict, weights: dict) -> None:
        model.update(weights=dict(weights), state=oracle.initial_state(model["spec"]))

    def train(self, model: dict, x, loss: Loss, lr: float, steps: int, watch: bool = False):
        losses, model["weights"], model["state"] = oracle.train(
            model["spec"], model["weights"], x, loss, lr, steps, state=model["state"]
        )[:3]
        return losses, {}

    def get_state(self, model: dict, name: str) -> np.ndarray:
        return model["state"][name]


def unfrozen(spec: ModelSpec) -> ModelSpec:
    """``spec`` with every layer trainable: what a loop that forgot to freeze trains."""
    layers = tuple(
        dataclasses.replace(layer, trainable=True) if isinstance(layer, Dense | BatchNorm) else layer
        for layer in spec.layers
    )
    return ModelSpec(spec.name, spec.in_features, layers, spec.ties)


def oracle_loop(carries_statistics: bool = True, freezes: bool = True, ties: bool = True):
    """A make_handwritten on the oracle; it can forget to carry the running statistics from step
    to step (as a jitted loop that drops its new batch_stats does: same losses, stale statistics),
    to freeze, or to tie (a copy of the table in the output layer, not the table itself)."""

    def make_handwritten(spec, weights, x, y, lr) -> bench.HandwrittenLoop:
        trained = spec if freezes else unfrozen(spec)
        if not ties:
            trained, weights = trained.untied(), oracle.expand_tied(trained, weights)
        now = {"weights": dict(weights), "state": oracle.initial_state(spec)}

        def run(steps: int) -> np.ndarray:
            losses, now["weights"], state = oracle.train(
                trained, now["weights"], x, Loss("mse", y), lr, steps, state=now["state"]
            )[:3]
            if carries_statistics:
                now["state"] = state
            return losses

        return bench.HandwrittenLoop(run, lambda: dict(now["state"]))

    return make_handwritten


@pytest.fixture
def few_steps(monkeypatch):
    monkeypatch.setattr(bench, "STEPS", 3)
    monkeypatch.setattr(bench, "TRAINING_REPEATS", 1)


@pytest.mark.parametrize("spec", bench.BENCH_MODELS, ids=lambda spec: spec.name)
def test_a_faithful_loop_is_timed(few_steps, spec):
    ratios = bench.measure_training(OracleBackend(), oracle_loop(), spec)
    assert_equal("ratios measured", sorted(ratios), ["unwatched", "watched"])
    assert all(value > 0 for value in ratios.values()), ratios


@pytest.mark.parametrize(
    ("loop", "named"),
    [
        (oracle_loop(carries_statistics=False), "layers.1.running_mean"),
        (oracle_loop(freezes=False), "losses"),
    ],
    ids=["forgets the statistics", "forgets to freeze"],
)
def test_a_loop_that_computes_something_else_is_refused_before_any_ratio(few_steps, loop, named):
    with pytest.raises(RuntimeError, match=f"batchnorm: the hand-written loop does not compute .*: {named}"):
        bench.measure_training(OracleBackend(), loop, BATCHNORM)


def test_an_embedding_loop_that_copies_the_table_instead_of_tying_it_is_refused(few_steps, monkeypatch):
    # A copy starts equal, and the two copies drift apart slowly (the head's share of the table's
    # gradient is small): 1e-5 relative after 1 step, past the tolerance after about 8.
    monkeypatch.setattr(bench, "STEPS", 20)
    with pytest.raises(
        RuntimeError, match=r"embed_tied: the hand-written loop does not compute .*: losses\["
    ):
        bench.measure_training(OracleBackend(), oracle_loop(ties=False), EMBED_TIED)


def test_disagreement_names_what_differs_and_accepts_rounding():
    losses, stats = np.array([1.0, 0.5]), {"layers.1.running_mean": np.array([0.1, 0.2])}
    rounded = {"layers.1.running_mean": np.array([0.1, 0.2]) * (1 + 1e-7)}
    assert_equal("rounding", bench.disagreement((losses * (1 + 1e-7), rounded), (losses, stats)), None)
    moved = {"layers.1.running_mean": np.array([0.1, 0.25])}
    assert_equal(
        "a statistic off",
        bench.disagreement((losses, moved), (losses, stats)),
        "layers.1.running_mean[1]=0.25, but should be 0.2 (the adapter's; 1 of 2 elements differ)",
    )
    assert_equal(
        "a statistic missing",
        bench.disagreement((losses, {}), (losses, stats)),
        "running statistics [], but should be ['layers.1.running_mean']",
    )
    assert_equal(
        "fewer losses",
        bench.disagreement((losses[:1], stats), (losses, stats)),
        "losses: shape=(1,), but should be (2,)",
    )


# -- the table -----------------------------------------------------------------------------------------
def test_the_table_has_a_row_per_model_in_bench_order_and_the_backend_columns_once():
    # As the records arrive: JSON with sorted keys, so batchnorm before tied.
    report = {
        "backends": {
            "alpha": {
                "ok": True,
                "bare_import_s": 1.5,
                "training": {
                    "batchnorm": {"unwatched": 1.04, "watched": 1.08},
                    "tied": {"unwatched": 0.97, "watched": 1.01},
                },
            },
            "beta": {
                "ok": True,
                "bare_import_s": 2.0,
                "training": {
                    "batchnorm": {"skipped": "batchnorm is declared false: no BatchNorm layer"},
                    "tied": {"unwatched": 1.0, "watched": 1.0},
                },
            },
        },
        "spec_per_layer_s": {str(size): 1e-5 for size in bench.SIZES},
        "env_create_s": {},
    }
    lines = bench.render(report).splitlines()
    assert_equal(
        "rows",
        [line.split() for line in lines[4:8]],
        [
            ["alpha", "tied", "0.97x", "1.01x", "-", "1.50s"],
            ["batchnorm", "1.04x", "1.08x"],
            ["beta", "tied", "1.00x", "1.00x", "-", "2.00s"],
            ["batchnorm", "-", "-"],
        ],
    )
    assert_equal(
        "below the table",
        lines[8],
        "beta: batchnorm not benched: batchnorm is declared false: no BatchNorm layer",
    )
