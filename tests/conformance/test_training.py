"""The chapter's exercises: train with a shared layer, watching every layer; nested access."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from common.commands.bench import BENCH_MODELS, bench_models, checked_pair
from common.commands.training import (
    baseline_start,
    oracle_losses,
    oracle_run,
    regression_data,
    seed_runs,
    train,
)
from common.core import oracle
from common.core.expectations import STATE_ATOL, STATE_RTOL, conventions_of
from common.core.models import BATCHNORM, NEST, STATE_SPECS, TIED
from common.core.oracle import Loss
from common.declarations import declaration
from common.envs import ROOT
from common.registry import load_backend
from tests.conformance.fixtures import loaded_model
from tests.helpers import assert_close, assert_equal

STEPS = 50
# Plain SGD at lr 0.05 on this small MLP contracts rounding errors instead of amplifying them:
# float32 against the float64 oracle stays within ~2e-7 relative over 50 steps (measured); 1e-5
# leaves room for other BLAS kernels while still catching any real difference (a wrong gradient or
# learning rate moves the curve by >1e-3 within a few steps).
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def tied_run(backend):
    return train(backend, TIED, baseline_start(TIED)[0], steps=STEPS)


def test_tied_positions_hold_identical_values_after_every_step(tied_run):
    unequal = [i for i, step in enumerate(tied_run.steps) if not step.tied_positions_equal]
    assert_equal("steps where layers.2 != layers.4", unequal, [])


def test_loss_curve_matches_the_oracle(tied_run):
    reference = oracle_losses(TIED, baseline_start(TIED)[0], steps=STEPS)
    assert_close(
        "loss curve", tied_run.losses, reference, f"first {STEPS} SGD steps", rtol=LOSS_RTOL, atol=0.0
    )


def test_applied_gradient_is_the_sum_of_per_position_contributions(tied_run):
    worst = max(step.sum_minus_applied for step in tied_run.steps)
    assert worst <= 1e-6, f"max |sum of uses - applied|={worst:.3g}, but should be <= 1e-6"
    contributions = tied_run.steps[0].contribution_norms
    assert_equal(
        "watched contributions",
        sorted(contributions),
        ["layers.2.bias", "layers.2.weight", "layers.4.bias", "layers.4.weight"],
    )


def test_every_layer_is_watched(tied_run):
    positions = [name for p in TIED.params for name in p.positions]
    for step in tied_run.steps:
        assert_equal("watched positions", sorted(step.grad_norms), sorted(positions))
        assert all(np.isfinite(list(step.param_norms.values())))


WATCHED_STEPS = 5


@pytest.fixture(scope="module", params=list(STATE_SPECS.values()), ids=lambda s: s.name)
def watched_state_run(request, backend):
    """What `make train --model batchnorm` (or tied_batchnorm) draws, for a few steps, beside the
    oracle's run under this backend's declared conventions."""
    spec = request.param
    for capability in ("batchnorm", "freezing"):
        declared = declaration(backend.name).capability(capability)
        if not declared.value:
            pytest.skip(f"{capability} is declared false: {declared.reason}")
    start = baseline_start(spec)[0]
    conventions = conventions_of(declaration(backend.name).facts)
    run = train(backend, spec, start, steps=WATCHED_STEPS)
    return run, oracle_run(spec, start, WATCHED_STEPS, conventions=conventions)


def _close(name, actual, expected, context):
    __tracebackhide__ = True
    assert_close(name, actual, expected, context, rtol=STATE_RTOL, atol=STATE_ATOL)


def _watched_close(run, reference, keys):
    __tracebackhide__ = True
    for index, (mine, theirs) in enumerate(zip(run.steps, reference.steps, strict=True)):
        for key in keys:
            seen, expected = getattr(mine, key), getattr(theirs, key)
            assert_equal(f"{key} positions", sorted(seen), sorted(expected), f"step {index}")
            _close(key, [seen[k] for k in sorted(seen)], [expected[k] for k in sorted(seen)], f"step {index}")


def test_a_watched_batchnorm_run_follows_the_oracle(watched_state_run):
    """Losses, every position's parameter and applied-gradient norms, each tied use's gradient; a
    frozen layer has no applied gradient; every tie holds, its running statistics included."""
    run, reference = watched_state_run
    _close("losses", run.losses, reference.losses, run.spec.name)
    _watched_close(run, reference, ("param_norms", "grad_norms", "contribution_norms"))
    unequal = [index for index, step in enumerate(run.steps) if not step.tied_positions_equal]
    assert_equal("steps where a tied position read differently", unequal, [])
    frozen = {name for p in run.spec.params if not p.trainable for name in p.positions}
    assert frozen or run.spec.ties, "the spec has a frozen layer or a tie: something to check"
    assert_equal(
        "frozen positions with an applied gradient", sorted(frozen & set(run.steps[0].grad_norms)), []
    )


def test_watched_running_statistics_follow_the_declared_conventions(watched_state_run):
    """The running statistics read at every step, and after the last, under this backend's declared
    momentum, epsilon, running variance and frozen behaviour."""
    run, reference = watched_state_run
    _watched_close(run, reference, ("state_norms",))
    for name, value in reference.final_state.items():
        _close(name, run.final_state[name], value, f"after {WATCHED_STEPS} steps")


def test_seed_runs_on_the_fast_path_match_the_oracle(backend):
    """`make train`'s seeds of tied against untied: each seed's losses and final parameters, from
    the framework's compiled loop on models reloaded per seed, against the oracle's same seed."""
    steps = 10
    for run in seed_runs(backend, TIED, seeds=2, steps=steps):
        for kind, start in zip(("tied", "untied"), baseline_start(TIED, run.seed), strict=True):
            mine = getattr(run, kind)
            reference = oracle_run(mine.spec, start, steps, watch=False)
            context = f"seed {run.seed}, {kind}"
            assert_close("losses", mine.losses, reference.losses, context, rtol=LOSS_RTOL, atol=0.0)
            for name, value in reference.final_params.items():
                assert_close(name, mine.final_params[name], value, context)


def test_untied_baseline_starts_as_the_same_function(backend):
    tied_start, untied_start = baseline_start(TIED)
    tied = train(backend, TIED, tied_start, steps=1, watch=False)
    untied = train(backend, TIED.untied(), untied_start, steps=1, watch=False)
    assert_close("initial loss, untied vs tied", untied.losses[0], tied.losses[0])


def test_nest_params_reachable_by_canonical_and_native_name(backend):
    """Exercise 1: every layer of NestMLP, by canonical name and by the framework's own name."""
    model, weights = loaded_model(backend, NEST)
    for param in backend.list_params(model):
        by_canonical = backend.get_param(model, param.name)
        by_native = backend.get_by_native_name(model, param.native_name)
        assert_close(param.name, by_canonical, weights[param.name], "by canonical name")
        assert_close(param.native_name, by_native, weights[param.name], "by native name")
    with pytest.raises(KeyError, match="no-such-param"):
        backend.get_by_native_name(model, "no-such-param")


def _regression_loss():
    x, y = regression_data(TIED)
    return x, Loss("mse", y)


def test_bulk_training_matches_step_by_step(backend):
    """train(steps=N) on the fast path and N single sgd_step calls are the same SGD run."""
    x, loss = _regression_loss()
    bulk, _ = loaded_model(backend, TIED)
    stepped, _ = loaded_model(backend, TIED)
    losses, grads = backend.train(bulk, x, loss, 0.05, steps=4, watch=True)
    singles = [backend.sgd_step(stepped, x, loss, 0.05) for _ in range(4)]
    assert_close("bulk losses", losses, [value for value, _ in singles], "vs 4 sgd_step calls")
    assert_equal("watched parameters", sorted(grads), sorted(TIED.param_shapes))
    for name, per_step in grads.items():
        assert_equal(f"{name} watched shape", per_step.shape, (4, *TIED.param_shapes[name]))
        for step, (_, applied) in enumerate(singles):
            assert_close(f"{name} grad at step {step}", per_step[step], applied[name])
    for name, value in backend.snapshot(bulk).items():
        assert_close(f"{name} after 4 steps", value, backend.snapshot(stepped)[name])
    unwatched_losses, unwatched = backend.train(bulk, x, loss, 0.05, steps=2, watch=False)
    assert_equal("gradients returned without watch", unwatched, {})
    assert_equal("losses shape", np.shape(unwatched_losses), (2,))


def test_data_changed_in_place_between_calls_is_trained_on(backend):
    """An adapter may keep device copies of the data from one call to the next (a hand-written
    loop copies its data once); the caller's arrays stay the caller's, so after an in-place change
    of the input and the target, the next call trains on the new values, as the oracle does."""
    x, loss = _regression_loss()
    x, target = x.copy(), loss.target.copy()
    loss = Loss("mse", target)
    model, _ = loaded_model(backend, TIED)
    backend.train(model, x, loss, 0.05, steps=1)
    x *= -1.0
    target += 1.0
    _trains_on_as_the_oracle(backend, model, x, loss, "after x and the target changed in place")


def _trains_on_as_the_oracle(backend, model, x, loss, what: str, steps: int = 3) -> None:
    """The model's next ``steps`` losses are the oracle's, started from the model as it reads now."""
    now = backend.snapshot(model)
    losses, _ = backend.train(model, x, loss, 0.05, steps=steps)
    expected = oracle.train(TIED, now, x, loss, 0.05, steps).losses
    assert_close(f"losses {what}", losses, expected, rtol=LOSS_RTOL, atol=0.0)


INTERRUPT_AFTER_S, INTERRUPT_EVERY_S = 0.3, 0.1
LONG_RUN_STEPS = 1_000_000  # far more than any backend runs in INTERRUPT_AFTER_S


# An interrupt that lands in a finalizer or a gc callback (jax's, hypothesis') is printed and
# ignored by Python, and pytest reports each as a warning: expected here, hence the repeats below.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_training_call_interrupted_by_ctrl_c_leaves_the_model_usable(backend):
    """An adapter may let its compiled step reuse the buffers it is given (Equinox donates them);
    the model's own arrays must never be given, so Ctrl-C in the middle of a call leaves a model
    that reads back finite and trains on as the oracle does from where it stands."""
    x, loss = _regression_loss()
    model, _ = loaded_model(backend, TIED)
    backend.train(model, x, loss, 0.05, steps=2)  # compiled before the clock starts
    armed = [True]

    def interrupt(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = False
    try:
        # Repeated: a KeyboardInterrupt raised inside a garbage-collector callback (jax has one,
        # _xla_gc_callback) is printed and ignored, as in any finalizer (2 calls in 40 here).
        signal.setitimer(signal.ITIMER_REAL, INTERRUPT_AFTER_S, INTERRUPT_EVERY_S)
        backend.train(model, x, loss, 0.05, steps=LONG_RUN_STEPS)
    except KeyboardInterrupt:
        armed[0] = False
        interrupted = True
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted, f"{LONG_RUN_STEPS} steps finished before any interrupt landed"
    now = backend.snapshot(model)
    assert_equal("parameters readable", sorted(now), sorted(TIED.param_shapes))
    for name, value in now.items():
        assert np.isfinite(value).all(), f"{name} is not finite after the interrupted call"
    _trains_on_as_the_oracle(backend, model, x, loss, "after the interrupted call", steps=2)


def test_the_compiled_step_is_built_once_per_model(backend):
    """Repeated training calls, at any learning rate, reuse the compiled step: no retrace."""
    x, loss = _regression_loss()
    model, _ = loaded_model(backend, TIED)
    backend.train(model, x, loss, 0.05, steps=2, watch=False)
    backend.train(model, x, loss, 0.05, steps=2, watch=True)
    warm = backend.traces(model)
    backend.train(model, x, loss, 0.01, steps=3, watch=False)
    backend.train(model, x, loss, 0.02, steps=3, watch=True)
    backend.sgd_step(model, x, loss, 0.03)
    assert_equal("traces after warm-up", backend.traces(model), warm, "a retrace per call is slow")


def _bench_loop(backend, spec):
    """This backend's make_handwritten, or a skip saying why its bench leaves ``spec`` out."""
    entry = declaration(backend.name)
    chosen = bench_models(entry)[spec.name]
    if isinstance(chosen, str):
        pytest.skip(chosen)
    module, _, function = entry.bench.partition(":")
    return getattr(importlib.import_module(module), function)


# A loop that copies embed_tied's table into its output layer instead of tying it drifts from the
# tied one slowly: 1e-5 relative after 1 step, past the check's tolerance after about 8 (oracle).
BENCH_CHECK_STEPS = 20


@pytest.mark.parametrize("spec", BENCH_MODELS, ids=lambda spec: spec.name)
def test_the_bench_loop_trains_the_same_model(backend, spec):
    """``make bench`` compares the adapter with this backend's hand-written loop on each bench
    model: the same losses and the same running statistics (the check the bench itself makes
    before timing, here after BENCH_CHECK_STEPS steps), or the ratio means nothing. A loop that
    keeps no statistics, trains a frozen layer, copies a table it should tie or computes another
    model fails here."""
    checked_pair(backend, _bench_loop(backend, spec), spec, steps=BENCH_CHECK_STEPS)


def bench_check_in_this_process(name: str) -> None:
    """The bench's check on the BatchNorm model, with it the first model this process builds."""
    backend = load_backend(name)
    checked_pair(backend, _bench_loop(backend, BATCHNORM), BATCHNORM, steps=5)


def test_the_bench_check_holds_in_a_fresh_process(backend):
    """``make bench`` checks in a fresh process, where the first model's first steps are the
    slowest: running statistics read right after training must be the ones it left (MXNet's
    engine let the read overtake BatchNorm's backward there)."""
    _bench_loop(backend, BATCHNORM)  # skips where the bench leaves the model out
    check = "from tests.conformance.test_training import bench_check_in_this_process as check"
    code = f"{check}; check({backend.name!r})"
    # The timeout only ends a hang; nothing here is timed.
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert_equal(
        "exit status", done.returncode, 0, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    )
