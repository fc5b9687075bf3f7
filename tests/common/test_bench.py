"""``make bench``'s training part, framework-free: which models every backend's bench trains, the
check that a hand-written loop computes what the adapter does before any ratio is taken, and the
table. The oracle stands in for a framework (trained in float64, as adapter and as loop alike);
nothing here is timed against anything."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.commands import bench
from common.core import oracle
from common.core.models import BATCHNORM, TIED
from common.core.oracle import Loss
from common.core.spec import BatchNorm, Dense, ModelSpec
from common.declarations import Capability, declarations
from tests.helpers import assert_equal


def test_every_backend_bench_trains_the_tied_and_the_batchnorm_model():
    assert_equal("bench models", [spec.name for spec in bench.BENCH_MODELS], [TIED.name, BATCHNORM.name])
    for entry in declarations():
        assert_equal(
            f"{entry.name}'s bench models", bench.bench_models(entry), {"tied": TIED, "batchnorm": BATCHNORM}
        )


def test_a_backend_without_batchnorm_is_benched_on_the_tied_model_and_says_why():
    entry = declarations()[0]
    lacking = dataclasses.replace(
        entry, capabilities={**entry.capabilities, "batchnorm": Capability(False, "no BatchNorm layer here")}
    )
    assert_equal(
        "bench models",
        bench.bench_models(lacking),
        {"tied": TIED, "batchnorm": "batchnorm is declared false: no BatchNorm layer here"},
    )


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


def oracle_loop(carries_statistics: bool = True, freezes: bool = True):
    """A make_handwritten on the oracle; it can forget to carry the running statistics from step
    to step (as a jitted loop that drops its new batch_stats does: same losses, stale statistics)
    or to freeze."""

    def make_handwritten(spec, weights, x, y, lr) -> bench.HandwrittenLoop:
        trained = spec if freezes else unfrozen(spec)
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
