"""The chapter's exercises: train a model (the tied MLP by default, or one with BatchNorm) with
each framework's own SGD, from the seeded weights, watching every layer's parameters, gradients
and running statistics; for a model with a tie, the untied model is the baseline, over seeds.

``train`` drives one adapter and runs in that backend's environment. The per-position
contributions to a tied gradient come from the same framework: the untied model, loaded with
the tied model's current weights, computes each use's gradient separately. ``seed_runs`` trains
the tied model and its untied baseline from several seeds on the adapter's fast path (no
watching), for the "why share" answer. ``oracle_run`` is ``train`` in float64 numpy under a
backend's BatchNorm conventions: the reference every backend is compared with.

Held-out data comes from the same hidden function as the training set, at inputs the training
never sees: ``regression_data(spec, held_out=k)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.core import oracle
from common.core.interface import Backend
from common.core.models import BOOK_SPECS, STATE_SPECS, TIED
from common.core.oracle import Conventions, Loss
from common.core.spec import ModelSpec
from common.errors import UsageError

DEFAULT_STEPS = 200
DEFAULT_LR = 0.05
DEFAULT_SEEDS = 5
DEFAULT_MODEL = TIED.name
MODELS: dict[str, ModelSpec] = {**BOOK_SPECS, **STATE_SPECS}  # what `make train --model` accepts
DATA_SEED = 42
N_SAMPLES = 64
HELD_OUT_SAMPLES = 256
# The oracle's own BatchNorm conventions: what a run without a backend's declared ones uses (a
# model without BatchNorm does not depend on them).
NO_CONVENTIONS = Conventions()
_HELD_OUT_STREAM = 1  # a second random stream for held-out inputs; the training draws stay as they were


def model_spec(name: str) -> ModelSpec:
    """The spec ``--model`` names; an unknown name is one line that lists the valid ones."""
    if name not in MODELS:
        import difflib

        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"--model={name!r} is not a model{hint}; valid: {', '.join(MODELS)}")
    return MODELS[name]


def regression_data(
    spec: ModelSpec, n: int = N_SAMPLES, seed: int = DATA_SEED, held_out: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic synthetic regression set: y = sin(x @ a) + 0.5 * cos(x @ b), float32.

    With ``held_out=k``: k new inputs from another random stream, labelled by the same hidden
    function (a, b) as the n-sample training set; none of them is a training input.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, spec.in_features))
    a = rng.normal(size=(spec.in_features, spec.out_features))
    b = rng.normal(size=(spec.in_features, spec.out_features))
    if held_out is not None:
        if held_out < 1:
            raise ValueError(f"held_out={held_out}, but should be a number of samples >= 1")
        x = np.random.default_rng((seed, _HELD_OUT_STREAM)).uniform(
            -1.0, 1.0, size=(held_out, spec.in_features)
        )
    y = np.sin(x @ a) + 0.5 * np.cos(x @ b)
    return x.astype(np.float32), y.astype(np.float32)


@dataclass
class Step:
    """What one step shows, read before the step is applied (the loss is the loss before it)."""

    loss: float
    param_norms: dict[str, float]  # position name (layers.4.weight) -> norm, read through that position
    grad_norms: dict[str, float]  # position name -> norm of the applied gradient; frozen ones absent
    contribution_norms: dict[str, float] = field(default_factory=dict)  # tied position -> its own use
    state_norms: dict[str, float] = field(default_factory=dict)  # layers.1.running_mean -> its norm
    sum_minus_applied: float = 0.0  # max |sum of contributions - applied gradient| over tied params
    tied_positions_equal: bool = True  # parameters and state read the same through every tied position


@dataclass
class TrainRun:
    spec: ModelSpec
    steps: list[Step]
    final_params: dict[str, np.ndarray]
    held_out_losses: list[float] = field(default_factory=list)  # per step, where the run measured it
    final_state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [step.loss for step in self.steps]


def _positions(spec: ModelSpec) -> tuple[list[str], dict[str, str]]:
    """Every parameter position and its owner."""
    owner = {name: p.name for p in spec.params for name in p.positions}
    return list(owner), owner


def _state_positions(spec: ModelSpec) -> dict[str, str]:
    """Every state position (layers.4.running_mean) and its owner."""
    return {name: s.name for s in spec.state for name in s.positions}


def expand_tied_state(spec: ModelSpec, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Running statistics of ``spec`` rewritten for ``spec.untied()``: every position its own copy."""
    return {name: np.array(state[owner]) for name, owner in _state_positions(spec).items()}


def _load(backend: Backend, spec: ModelSpec, weights: Mapping[str, np.ndarray], state=None):
    """A model of ``spec`` with these weights and running statistics (the framework's start,
    mean 0 and variance 1, loaded explicitly where none are given)."""
    model = backend.build_mlp(spec)
    backend.load_params(model, weights)
    if spec.state:
        backend.load_state(model, oracle.initial_state(spec) if state is None else state)
    return model


def train(
    backend: Backend,
    spec: ModelSpec,
    initial: dict[str, np.ndarray],
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    watch: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainRun:
    """``steps`` single SGD steps of the framework, each watched: every position's parameter norm,
    applied-gradient norm and running statistics, and each tied use's own gradient."""
    x, y = regression_data(spec)
    loss = Loss("mse", y)
    model = _load(backend, spec, initial)
    shared = [p for p in spec.params if len(p.positions) > 1]
    shared_state = [s for s in spec.state if len(s.positions) > 1]
    uses_model = (
        _load(backend, spec.untied(), oracle.expand_tied(spec, initial)) if (watch and shared) else None
    )
    positions, owner = _positions(spec)
    state_positions = _state_positions(spec)
    history = []
    for index in range(steps):
        record = Step(loss=0.0, param_norms={}, grad_norms={})
        if watch:
            record.param_norms = {name: _norm(backend.get_param(model, name)) for name in positions}
            record.state_norms = {name: _norm(backend.get_state(model, name)) for name in state_positions}
        if uses_model is not None:
            backend.load_params(uses_model, oracle.expand_tied(spec, backend.snapshot(model)))
            if spec.state:  # a frozen BatchNorm in inference mode normalizes by them
                backend.load_state(uses_model, expand_tied_state(spec, backend.state_snapshot(model)))
            contributions = backend.backward(uses_model, x, loss)
        value, applied = backend.sgd_step(model, x, loss, lr)
        record.loss = value
        if watch:
            record.grad_norms = {
                name: _norm(applied[owner[name]]) for name in positions if owner[name] in applied
            }
        if uses_model is not None:
            worst = 0.0
            for param in shared:
                if param.name in applied:
                    parts = [contributions[name] for name in param.positions]
                    record.contribution_norms.update(
                        {n: _norm(g) for n, g in zip(param.positions, parts, strict=True)}
                    )
                    worst = max(worst, float(np.max(np.abs(sum(parts) - applied[param.name]))))
                values = [backend.get_param(model, name) for name in param.positions]
                record.tied_positions_equal &= all(np.array_equal(v, values[0]) for v in values)
            for slot in shared_state:
                values = [backend.get_state(model, name) for name in slot.positions]
                record.tied_positions_equal &= all(np.array_equal(v, values[0]) for v in values)
            record.sum_minus_applied = worst
        history.append(record)
        if on_step:
            on_step(index)
    final_state = backend.state_snapshot(model) if spec.state else {}
    return TrainRun(spec, history, backend.snapshot(model), final_state=final_state)


@dataclass
class SeedRun:
    """One seed of the "why share" comparison: the tied model and its untied baseline, each from
    that seed's weights (the untied one from the same values copied into every position)."""

    seed: int
    tied: TrainRun
    untied: TrainRun


def seed_runs(
    backend: Backend,
    spec: ModelSpec,
    seeds: int,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    on_seed: Callable[[int], None] | None = None,
) -> list[SeedRun]:
    """Seeds 0 .. seeds-1 on the adapter's fast path (``Backend.train``, unwatched): one model of
    each kind, loaded anew for every seed, so the compiled step is built once."""
    x, y = regression_data(spec)
    loss = Loss("mse", y)
    kinds = (spec, spec.untied())
    models = [backend.build_mlp(kind) for kind in kinds]
    runs = []
    for seed in range(seeds):
        done = []
        for kind, model, start in zip(kinds, models, baseline_start(spec, seed), strict=True):
            backend.load_params(model, start)
            if kind.state:
                backend.load_state(model, oracle.initial_state(kind))
            losses, _ = backend.train(model, x, loss, lr, steps)
            final_state = backend.state_snapshot(model) if kind.state else {}
            history = [Step(loss=float(v), param_norms={}, grad_norms={}) for v in losses]
            done.append(TrainRun(kind, history, backend.snapshot(model), final_state=final_state))
        runs.append(SeedRun(seed, *done))
        if on_seed:
            on_seed(seed)
    return runs


def baseline_start(spec: ModelSpec, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Seeded weights for ``spec`` and the same values copied into every position of
    ``spec.untied()``, so the tied run and its baseline begin as the same function."""
    weights = oracle.initial_weights(spec, seed)
    return weights, oracle.expand_tied(spec, weights)


def oracle_losses(
    spec: ModelSpec, initial: dict[str, np.ndarray], steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR
) -> list[float]:
    """The same run in float64 numpy: the reference loss curve."""
    return oracle_run(spec, initial, steps, lr, watch=False).losses


def oracle_run(
    spec: ModelSpec,
    initial: dict[str, np.ndarray],
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    watch: bool = True,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    conventions: Conventions = NO_CONVENTIONS,
) -> TrainRun:
    """``train`` in float64 numpy under a backend's BatchNorm ``conventions``: the reference run,
    watched like a backend's (every position's parameter, applied-gradient and running-statistics
    norms, each shared use's own gradient). Frozen parameters are not updated. With ``held_out=(x,
    y)``, the loss on that data (inference mode) is measured too, before each step as the training
    loss is."""
    x, y = regression_data(spec)
    loss = Loss("mse", y.astype(np.float64))
    weights = {k: np.asarray(v, dtype=np.float64) for k, v in initial.items()}
    running = oracle.initial_state(spec)
    frozen = {p.name for p in spec.params if not p.trainable}
    positions, owner = _positions(spec)
    state_positions = _state_positions(spec)
    shared = {name for p in spec.params if len(p.positions) > 1 and p.trainable for name in p.positions}
    history, held_out_losses = [], []
    for _ in range(steps):
        result = oracle.backward(spec, weights, x, loss, state=running, conventions=conventions)
        step = Step(loss=result.loss, param_norms={}, grad_norms={})
        if watch:
            step.param_norms = {name: _norm(weights[owner[name]]) for name in positions}
            step.grad_norms = {
                name: _norm(result.grads[owner[name]]) for name in positions if owner[name] not in frozen
            }
            step.contribution_norms = {
                name: _norm(result.position_grads[name]) for name in positions if name in shared
            }
            step.state_norms = {
                name: _norm(running[state_owner]) for name, state_owner in state_positions.items()
            }
        history.append(step)
        if held_out is not None:
            held_out_losses.append(mse(spec, weights, *held_out, state=running, conventions=conventions))
        running = result.state
        weights = {k: w if k in frozen else w - lr * result.grads[k] for k, w in weights.items()}
    return TrainRun(spec, history, weights, held_out_losses, final_state=running)


def mse(
    spec: ModelSpec,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    state: Mapping[str, np.ndarray] | None = None,
    conventions: Conventions = NO_CONVENTIONS,
) -> float:
    """The mean squared error of ``params`` (and running statistics ``state``) on (x, y), in
    inference mode, evaluated by the float64 numpy oracle."""
    prediction = oracle.forward(
        spec,
        {k: np.asarray(v, dtype=np.float64) for k, v in params.items()},
        x,
        state=state or None,
        conventions=conventions,
    )
    return float(np.mean((prediction - np.asarray(y, dtype=np.float64)) ** 2))


def _norm(array: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(array, dtype=np.float64)))


def layer_of(position: str) -> str:
    """``layers.4.weight`` -> ``layers.4``."""
    return position.rsplit(".", 1)[0]


def parameter_budget(spec: ModelSpec) -> dict[str, int]:
    """Unique parameters of a spec: tensors, scalars, and float32 bytes."""
    scalars = sum(int(np.prod(p.shape)) for p in spec.params)
    return {"tensors": len(spec.params), "scalars": scalars, "bytes": 4 * scalars}


def training_record(
    backend: Backend,
    spec: ModelSpec,
    steps: int,
    lr: float,
    seeds: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The watched run, then (for a model with a tie) the seeds of tied against untied: what
    `make train` plots. Runs in the backend's env."""
    started = time.monotonic()
    seeds = seeds if spec.ties else 0
    show = progress_ticks(steps + seeds, progress)
    watched = train(
        backend,
        spec,
        baseline_start(spec)[0],
        steps,
        lr,
        on_step=lambda i: show(i + 1, f"watched step {i + 1}/{steps}"),
    )
    runs = seed_runs(
        backend, spec, seeds, steps, lr, on_seed=lambda s: show(steps + s + 1, f"seed {s + 1}/{seeds}")
    )
    listed = {"model": _listed(backend, spec)}
    if spec.ties:
        listed["untied"] = _listed(backend, spec.untied())
    return {
        "backend": backend.name,
        "ok": True,
        **runs_record(watched, runs, lr),
        "listed": listed,
        "versions": backend.versions(),
        "timing": {"seconds": round(time.monotonic() - started, 2)},
    }


def _plain_arrays(values: Mapping[str, np.ndarray]) -> dict[str, list]:
    return {name: np.asarray(value, dtype=np.float64).tolist() for name, value in values.items()}


def run_record(run: TrainRun, watched: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "losses": run.losses,
        "final_params": _plain_arrays(run.final_params),
        "final_state": _plain_arrays(run.final_state),
    }
    if watched:
        record["history"] = [dataclasses.asdict(step) for step in run.steps]
    return record


def runs_record(watched: TrainRun, seeds: list[SeedRun], lr: float) -> dict[str, Any]:
    """The JSON-ready part of a training record made from the runs (no framework needed)."""
    return {
        "model": watched.spec.name,
        "steps": len(watched.steps),
        "lr": lr,
        "watched": run_record(watched, watched=True),
        "seed_runs": [
            {"seed": run.seed, "tied": run_record(run.tied), "untied": run_record(run.untied)}
            for run in seeds
        ],
        "checks": {
            "max_sum_minus_applied": max((s.sum_minus_applied for s in watched.steps), default=0.0),
            "tied_positions_equal_every_step": all(s.tied_positions_equal for s in watched.steps),
        },
    }


def _listed(backend: Backend, spec: ModelSpec) -> dict[str, int]:
    """How many parameter tensors (and state tensors) the framework's own listing shows."""
    model = backend.build_mlp(spec)
    backend.materialize(model)
    counts = {"params": len(backend.list_params(model))}
    if spec.state:
        counts["state"] = len(backend.list_state(model))
    return counts


def progress_ticks(
    total: int, progress: Callable[[str], None], lines: int = 10
) -> Callable[[int, str], None]:
    """``show(done, label)`` for ``done`` in 1..total that reports at most ``lines`` times: at every
    tenth of the work and at the end, as a bar, a percentage and ``label``."""
    marks = {max(1, round(total * k / lines)) for k in range(1, lines + 1)}

    def show(done: int, label: str) -> None:
        if done in marks:
            filled = 20 * done // total
            progress(f"[{'#' * filled}{'.' * (20 - filled)}] {100 * done // total:3d}%  {label}")

    return show


def main(argv: list[str] | None = None) -> int:
    from common.commands.fanout import child_main, report_progress
    from common.registry import load_backend

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default=DEFAULT_MODEL)
        parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
        parser.add_argument("--lr", type=float, default=DEFAULT_LR)
        parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)

    def produce(args: argparse.Namespace) -> dict[str, Any]:
        spec = model_spec(args.model)
        return training_record(
            load_backend(args.backend), spec, args.steps, args.lr, args.seeds, report_progress
        )

    return child_main(
        "Train a model (and, with a tie, its untied baseline) in one backend.", produce, arguments, argv
    )


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DEFAULT_LR",
    "DEFAULT_MODEL",
    "DEFAULT_SEEDS",
    "DEFAULT_STEPS",
    "HELD_OUT_SAMPLES",
    "MODELS",
    "SeedRun",
    "Step",
    "TrainRun",
    "baseline_start",
    "expand_tied_state",
    "model_spec",
    "mse",
    "oracle_losses",
    "oracle_run",
    "regression_data",
    "runs_record",
    "seed_runs",
    "train",
]
