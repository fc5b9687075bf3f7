"""The chapter's exercises: train the tied MLP with each framework's own SGD, from the seeded
weights, watching every layer's parameters and gradients; the untied model is the baseline.

``train`` drives one adapter and runs in that backend's environment. The per-position
contributions to the tied gradient come from the same framework: the untied model, loaded with
the tied model's current weights, computes each use's gradient separately. ``oracle_run`` is the
same run in float64 numpy, the reference every backend is compared with.

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
from common.core.models import TIED
from common.core.oracle import Loss
from common.core.spec import ModelSpec

DEFAULT_STEPS = 200
DEFAULT_LR = 0.05
DATA_SEED = 42
N_SAMPLES = 64
HELD_OUT_SAMPLES = 256
_HELD_OUT_STREAM = 1  # a second random stream for held-out inputs; the training draws stay as they were


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
    loss: float
    param_norms: dict[str, float]  # position name (layers.4.weight) -> norm, read through that position
    grad_norms: dict[str, float]  # position name -> norm of the gradient the optimizer applied
    contribution_norms: dict[str, float] = field(default_factory=dict)  # tied position -> its own use
    sum_minus_applied: float = 0.0  # max |sum of contributions - applied gradient| over tied params
    tied_positions_equal: bool = True


@dataclass
class TrainRun:
    spec: ModelSpec
    steps: list[Step]
    final_params: dict[str, np.ndarray]
    held_out_losses: list[float] = field(default_factory=list)  # per step, where the run measured it

    @property
    def losses(self) -> list[float]:
        return [step.loss for step in self.steps]


def train(
    backend: Backend,
    spec: ModelSpec,
    initial: dict[str, np.ndarray],
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    watch: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainRun:
    x, y = regression_data(spec)
    loss = Loss("mse", y)
    model = backend.build_mlp(spec)
    backend.load_params(model, initial)
    shared = [p for p in spec.params if len(p.positions) > 1]
    uses_model = backend.build_mlp(spec.untied()) if (watch and shared) else None
    positions = [name for p in spec.params for name in p.positions]
    owner = {name: p.name for p in spec.params for name in p.positions}
    history = []
    for index in range(steps):
        record = Step(loss=0.0, param_norms={}, grad_norms={})
        if watch:
            record.param_norms = {name: _norm(backend.get_param(model, name)) for name in positions}
        if uses_model is not None:
            backend.load_params(uses_model, oracle.expand_tied(spec, backend.snapshot(model)))
            contributions = backend.backward(uses_model, x, loss)
        value, applied = backend.sgd_step(model, x, loss, lr)
        record.loss = value
        if watch:
            record.grad_norms = {name: _norm(applied[owner[name]]) for name in positions}
        if uses_model is not None:
            worst = 0.0
            for param in shared:
                parts = [contributions[name] for name in param.positions]
                record.contribution_norms.update(
                    {n: _norm(g) for n, g in zip(param.positions, parts, strict=True)}
                )
                worst = max(worst, float(np.max(np.abs(sum(parts) - applied[param.name]))))
                values = [backend.get_param(model, name) for name in param.positions]
                record.tied_positions_equal &= all(np.array_equal(v, values[0]) for v in values)
            record.sum_minus_applied = worst
        history.append(record)
        if on_step:
            on_step(index)
    return TrainRun(spec, history, backend.snapshot(model))


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
) -> TrainRun:
    """``train`` in float64 numpy: the reference run, watched like a backend's (every position's
    parameter and applied-gradient norms, each shared use's own gradient). With ``held_out=(x,
    y)``, the loss on that data is measured too, before each step as the training loss is."""
    x, y = regression_data(spec)
    loss = Loss("mse", y.astype(np.float64))
    weights = {k: np.asarray(v, dtype=np.float64) for k, v in initial.items()}
    shared = {name for p in spec.params if len(p.positions) > 1 for name in p.positions}
    owner = {name: p.name for p in spec.params for name in p.positions}
    history, held_out_losses = [], []
    for _ in range(steps):
        result = oracle.backward(spec, weights, x, loss)
        step = Step(loss=result.loss, param_norms={}, grad_norms={})
        if watch:
            step.param_norms = {name: _norm(weights[owner[name]]) for name in owner}
            step.grad_norms = {name: _norm(result.grads[owner[name]]) for name in owner}
            step.contribution_norms = {
                name: _norm(result.position_grads[name]) for name in owner if name in shared
            }
        history.append(step)
        if held_out is not None:
            held_out_losses.append(mse(spec, weights, *held_out))
        weights = {k: weights[k] - lr * result.grads[k] for k in weights}
    return TrainRun(spec, history, weights, held_out_losses)


def mse(spec: ModelSpec, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """The mean squared error of ``params`` on (x, y), evaluated by the float64 numpy oracle."""
    prediction = oracle.forward(spec, {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}, x)
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
    backend: Backend, steps: int, lr: float, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Tied run (watched), untied baseline: what `make train` plots. Runs in the backend's env."""
    started = time.monotonic()
    show = progress_ticks(2 * steps, progress)
    tied_start, untied_start = baseline_start(TIED)
    tied = train(backend, TIED, tied_start, steps, lr, on_step=lambda i: show(i + 1, f"tied {i + 1}/{steps}"))
    untied = train(
        backend,
        TIED.untied(),
        untied_start,
        steps,
        lr,
        watch=False,
        on_step=lambda i: show(steps + i + 1, f"untied {i + 1}/{steps}"),
    )
    record = runs_record(tied, untied, lr)
    record["tied"]["listed_params"] = len(backend.list_params(_built(backend, TIED)))
    record["untied"]["listed_params"] = len(backend.list_params(_built(backend, TIED.untied())))
    return {
        "backend": backend.name,
        "ok": True,
        **record,
        "versions": backend.versions(),
        "timing": {"seconds": round(time.monotonic() - started, 2)},
    }


def runs_record(tied: TrainRun, untied: TrainRun, lr: float) -> dict[str, Any]:
    """The JSON-ready part of a training record made from the two runs (no framework needed)."""

    def params(run: TrainRun) -> dict[str, list]:
        return {
            name: np.asarray(value, dtype=np.float64).tolist() for name, value in run.final_params.items()
        }

    return {
        "steps": len(tied.steps),
        "lr": lr,
        "tied": {
            "losses": tied.losses,
            "history": [dataclasses.asdict(s) for s in tied.steps],
            "budget": parameter_budget(tied.spec),
            "final_params": params(tied),
        },
        "untied": {
            "losses": untied.losses,
            "budget": parameter_budget(untied.spec),
            "final_params": params(untied),
        },
        "checks": {
            "max_sum_minus_applied": max((s.sum_minus_applied for s in tied.steps), default=0.0),
            "tied_positions_equal_every_step": all(s.tied_positions_equal for s in tied.steps),
        },
    }


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


def _built(backend: Backend, spec: ModelSpec):
    model = backend.build_mlp(spec)
    backend.materialize(model)
    return model


def main(argv: list[str] | None = None) -> int:
    from common.commands.fanout import child_main, report_progress
    from common.registry import load_backend

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
        parser.add_argument("--lr", type=float, default=DEFAULT_LR)

    def produce(args: argparse.Namespace) -> dict[str, Any]:
        return training_record(load_backend(args.backend), args.steps, args.lr, report_progress)

    return child_main("Train the tied MLP and its untied baseline in one backend.", produce, arguments, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "HELD_OUT_SAMPLES",
    "Step",
    "TrainRun",
    "baseline_start",
    "mse",
    "oracle_losses",
    "oracle_run",
    "regression_data",
    "runs_record",
    "train",
]
