"""The numpy reference: forward and backward for any spec, ties included, in float64.

It is the oracle every backend is compared against. A tied parameter's gradient is the sum of
its per-position contributions, which are returned too so callers can show the split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.core.spec import ROLES, Dense, ModelSpec, param_name
from common.core.untrusted import shown

LOSS_KINDS = ("sum", "mse")


@dataclass(frozen=True)
class Loss:
    """A scalar loss of the model output: ``sum(y)`` or ``mean((y - target)**2)``."""

    kind: str = "sum"
    target: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss kind={self.kind!r}, but should be one of {LOSS_KINDS}")
        if (self.kind == "mse") != (self.target is not None):
            raise ValueError("an 'mse' loss needs a target and a 'sum' loss takes none")

    def value(self, y: np.ndarray) -> float:
        if self.kind == "sum":
            return float(np.sum(y))
        return float(np.mean((y - self.target) ** 2))

    def grad(self, y: np.ndarray) -> np.ndarray:
        if self.kind == "sum":
            return np.ones_like(y)
        return 2.0 * (y - self.target) / y.size


@dataclass(frozen=True)
class Backward:
    loss: float
    output: np.ndarray
    grads: dict[str, np.ndarray]  # unique parameter name -> summed gradient
    position_grads: dict[str, np.ndarray]  # every position's name -> its own contribution


def initial_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 weights in canonical layout, uniform(+-1/sqrt(fan_in)) like torch's default."""
    rng = np.random.default_rng(seed)
    weights = {}
    for param in spec.params:
        fan_in = (
            param.shape[-1]
            if param.role == "weight"
            else spec.param_shapes[param.name.replace(".bias", ".weight")][1]
        )
        bound = 1.0 / np.sqrt(fan_in)
        weights[param.name] = rng.uniform(-bound, bound, size=param.shape).astype(np.float32)
    return weights


def check_input(spec: ModelSpec, x: object) -> np.ndarray:
    """``x`` as an array of shape (batch, spec.in_features), or a ValueError that names both
    shapes (rather than whatever a matrix product says three layers down)."""
    array = np.asarray(x)
    if array.ndim != 2 or array.shape[1] != spec.in_features or array.shape[0] < 1:
        raise ValueError(
            f"input x.shape={array.shape}, but should be (batch >= 1, {spec.in_features}): "
            f"spec {shown(spec.name)} takes in_features={spec.in_features}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"input x.dtype={array.dtype}, but should be a real number type")
    return array


def forward(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return _forward(spec, weights, check_input(spec, x))[0]


def backward(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray, loss: Loss) -> Backward:
    y, tape = _forward(spec, weights, check_input(spec, x))
    upstream = loss.grad(y)
    grads = {name: np.zeros(shape) for name, shape in spec.param_shapes.items()}
    position_grads = {}
    owners = {slot.path: slot.owner for slot in spec.dense_slots}
    for path, layer, inputs in reversed(tape):
        if isinstance(layer, Dense):
            owner = owners[path]
            w = np.asarray(weights[param_name(owner, "weight")], dtype=np.float64)
            contribution = {"weight": upstream.T @ inputs, "bias": upstream.sum(axis=0)}
            for role in ROLES:
                position_grads[param_name(path, role)] = contribution[role]
                grads[param_name(owner, role)] += contribution[role]
            upstream = upstream @ w
        else:  # ReLU
            upstream = upstream * (inputs > 0)
    ordered = {name: position_grads[name] for p in spec.params for name in p.positions}
    return Backward(loss.value(y), y, grads, ordered)


def _forward(spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray):
    h = np.asarray(x, dtype=np.float64)
    owners = {slot.path: slot.owner for slot in spec.dense_slots}
    tape = []
    for path, layer in spec.walk():
        tape.append((path, layer, h))
        if isinstance(layer, Dense):
            owner = owners[path]
            w = np.asarray(weights[param_name(owner, "weight")], dtype=np.float64)
            b = np.asarray(weights[param_name(owner, "bias")], dtype=np.float64)
            h = h @ w.T + b
        else:
            h = np.maximum(h, 0.0)
    return h, tape


def sample_input(spec: ModelSpec, batch: int = 2, seed: int = 1) -> np.ndarray:
    """The book's ``torch.rand(2, in_features)``, seeded."""
    return np.random.default_rng(seed).uniform(size=(batch, spec.in_features)).astype(np.float32)


def expand_tied(spec: ModelSpec, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights of ``spec`` rewritten for ``spec.untied()``: every position gets its own copy."""
    return {name: np.array(weights[p.name]) for p in spec.params for name in p.positions}
