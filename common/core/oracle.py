"""The numpy reference: forward and backward for any spec, ties included, in float64.

It is the oracle every backend is compared against. A tied parameter's gradient is the sum of
its per-position contributions, which are returned too so callers can show the split.

BatchNorm, in two modes. Training: normalize by the batch's mean and biased variance, then
update the running statistics, ``running = (1 - momentum) * running + momentum * batch``, the
running variance from the batch's biased or unbiased variance as the framework's ``Conventions``
say. Inference: normalize by the running statistics, which stay as they are. A frozen BatchNorm
(``trainable=False``) keeps its parameters; what it does to its statistics while training is the
framework's convention: keep training behaviour (torch's ``requires_grad_(False)``) or run in
inference mode (Keras 3's ``trainable = False``).

When the statistics move is a convention too (``statistics_update``). "forward": each use
updates them as it runs, so a BatchNorm used at two positions (a tie) blends the first use's
batch first. "backward" (MXNet, whose BatchNorm writes them in its backward pass): the updates
come after the forward, in reverse execution order, and only at a use the backward reaches, that
is, where the layer is trainable or a trainable parameter is used before it. And whether
inference reads them as they are (``inference_debias`` "none") or divided by
``1 - (1 - momentum) ** uses`` (Equinox's zero-debias, "use_count"), ``uses`` counting the layer's
training-mode uses since it was built (each use of a tie counts), which ``Backward.uses`` carries
from one call to the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from common.core.spec import ROLES, BatchNorm, Dense, Embedding, ModelSpec, layer_name, param_name
from common.core.untrusted import shown

MODES = ("inference", "training")
FROZEN_BATCHNORM = ("training", "inference")  # what a frozen BatchNorm does while training
STATISTICS_UPDATE = ("forward", "backward")  # when a training pass writes the running statistics
INFERENCE_DEBIAS = ("none", "use_count")  # how inference reads them


@dataclass(frozen=True)
class Conventions:
    """How a framework keeps BatchNorm statistics, in the oracle's terms; a backend's
    declaration states them as facts. ``momentum`` is canonical: the weight of the new batch."""

    momentum: float = 0.1
    eps: float = 1e-5
    unbiased_running_var: bool = True
    frozen_batchnorm: str = "training"
    statistics_update: str = "forward"
    inference_debias: str = "none"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("frozen_batchnorm", FROZEN_BATCHNORM),
            ("statistics_update", STATISTICS_UPDATE),
            ("inference_debias", INFERENCE_DEBIAS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}, but should be one of {allowed}")

    def settings(self, layer: BatchNorm) -> tuple[float, float]:
        """(momentum, eps) of ``layer``: its own where set, else the framework's defaults."""
        momentum = self.momentum if layer.momentum is None else layer.momentum
        return float(momentum), float(self.eps if layer.eps is None else layer.eps)


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
    state: dict[str, np.ndarray] = field(default_factory=dict)  # running statistics after the pass
    uses: dict[str, int] = field(default_factory=dict)  # training-mode uses per BatchNorm, after it


@dataclass(frozen=True)
class Update:
    """One running-statistics update a training pass applied: at the use ``path`` of the
    BatchNorm ``owner`` (a layer name), from that use's batch (n rows)."""

    owner: str
    path: tuple[int, ...]
    momentum: float
    mean: np.ndarray
    stored_var: np.ndarray  # the batch variance the running one averages (biased or unbiased)
    batch: int


@dataclass(frozen=True)
class Normalized:
    """What one BatchNorm use saved for the backward pass (and for the error bound)."""

    normalized: np.ndarray
    inv_std: np.ndarray  # 1 / sqrt(var + eps), per feature
    mean: np.ndarray  # the mean it subtracted: the batch's, or the running one as read
    var: np.ndarray  # the variance it divided by (without eps)
    batch_stats: bool  # True: the statistics depend on the batch, and their gradient flows
    debias: float = 1.0  # the running statistics were divided by this (use_count), else 1
    uses: int = 0  # the training-mode uses that debias counted


@dataclass(frozen=True)
class Pass:
    """One forward pass of the oracle: the output, the tape (path, layer, input, saved), the
    running statistics and use counts after it, and the updates in the order they were applied."""

    output: np.ndarray
    tape: list
    state: dict[str, np.ndarray]
    uses: dict[str, int]
    updates: list[Update]


def initial_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 weights in canonical layout, uniform(+-1/sqrt(fan_in)) like torch's default;
    a BatchNorm's scale uniform(0.5, 1.5) and shift uniform(-0.5, 0.5), so neither is trivial."""
    rng = np.random.default_rng(seed)
    in_features = {slot.path: slot.in_features for slot in spec.dense_slots}
    weights = {}
    for param in spec.params:
        if param.kind == "batchnorm":
            low, high = (0.5, 1.5) if param.role == "weight" else (-0.5, 0.5)
            weights[param.name] = rng.uniform(low, high, size=param.shape).astype(np.float32)
            continue
        # A weight's fan-in is its last axis (an embedding's table: dim, as for the Dense that reads it).
        fan_in = param.shape[-1] if param.role == "weight" else in_features[param.owner]
        bound = 1.0 / np.sqrt(fan_in)
        weights[param.name] = rng.uniform(-bound, bound, size=param.shape).astype(np.float32)
    return weights


def initial_state(spec: ModelSpec, seed: int | None = None) -> dict[str, np.ndarray]:
    """Running statistics: every framework's start (mean 0, variance 1), or with ``seed`` seeded
    values (mean uniform(-1, 1), variance uniform(0.5, 2)) to load and check."""
    state = {}
    rng = None if seed is None else np.random.default_rng(seed + 1000)
    for slot in spec.state:
        if rng is None:
            value = np.zeros(slot.shape) if slot.role == "running_mean" else np.ones(slot.shape)
        else:
            low, high = (-1.0, 1.0) if slot.role == "running_mean" else (0.5, 2.0)
            value = rng.uniform(low, high, size=slot.shape)
        state[slot.name] = value.astype(np.float32)
    return state


def check_input(spec: ModelSpec, x: object) -> np.ndarray:
    """``x`` as an array of shape (batch, spec.in_features), or for a model of ``ids`` an int64
    array of shape (batch,) in [0, vocab); otherwise a ValueError that names what was expected
    (rather than whatever a matrix product or a gather says three layers down)."""
    array = np.asarray(x)
    if spec.input_kind == "ids":
        vocab = spec.embed_slot.vocab
        if array.ndim != 1 or array.shape[0] < 1:
            raise ValueError(
                f"input x.shape={array.shape}, but should be (batch >= 1,): spec {shown(spec.name)} "
                f"takes ids, one per sample"
            )
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"input x.dtype={array.dtype}, but spec {shown(spec.name)} takes integer ids in [0, {vocab})"
            )
        if array.min() < 0 or array.max() >= vocab:
            raise ValueError(
                f"input ids span [{array.min()}, {array.max()}], but spec {shown(spec.name)} takes ids "
                f"in [0, {vocab})"
            )
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.integer) and array.ndim == 1:
        raise ValueError(
            f"input x is {array.ndim}-d {array.dtype}, ids, but spec {shown(spec.name)} takes features: "
            f"floats of shape (batch, {spec.in_features})"
        )
    if array.ndim != 2 or array.shape[1] != spec.in_features or array.shape[0] < 1:
        raise ValueError(
            f"input x.shape={array.shape}, but should be (batch >= 1, {spec.in_features}): "
            f"spec {shown(spec.name)} takes in_features={spec.in_features}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"input x.dtype={array.dtype}, but should be a real number type")
    return array


def forward(
    spec: ModelSpec,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    state: Mapping[str, np.ndarray] | None = None,
    mode: str = "inference",
    conventions: Conventions = Conventions(),
    uses: Mapping[str, int] | None = None,
) -> np.ndarray:
    return run(spec, weights, check_input(spec, x), state, mode, conventions, uses).output


def backward(
    spec: ModelSpec,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    loss: Loss,
    *,
    state: Mapping[str, np.ndarray] | None = None,
    mode: str = "training",
    conventions: Conventions = Conventions(),
    uses: Mapping[str, int] | None = None,
) -> Backward:
    """Gradients of every unique parameter (frozen ones too: a framework may or may not report
    them, but none is applied), and the running statistics and use counts after the pass in
    ``mode`` (``uses``: the counts before it, none by default)."""
    done = run(spec, weights, check_input(spec, x), state, mode, conventions, uses)
    y, tape = done.output, done.tape
    upstream = loss.grad(y)
    grads = {name: np.zeros(shape) for name, shape in spec.param_shapes.items()}
    position_grads = {}
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    for path, layer, inputs, saved in reversed(tape):
        if isinstance(layer, Embedding):
            table = np.zeros(spec.param_shapes[param_name(path, "weight")])
            np.add.at(table, inputs, upstream)  # a scatter-add: a repeated id sums its rows' gradients
            position_grads[param_name(path, "weight")] = table
            grads[param_name(path, "weight")] += table
            continue
        if isinstance(layer, Dense):
            w = np.asarray(weights[spec.owner_of(param_name(path, "weight"))], dtype=np.float64)
            contribution = {"weight": upstream.T @ inputs, "bias": upstream.sum(axis=0)}
            upstream = upstream @ w
        elif isinstance(layer, BatchNorm):
            normalized, inv_std = saved.normalized, saved.inv_std
            gamma = np.asarray(weights[param_name(owners[path], "weight")], dtype=np.float64)
            contribution = {"weight": (upstream * normalized).sum(axis=0), "bias": upstream.sum(axis=0)}
            d_normalized = upstream * gamma
            if saved.batch_stats:  # the statistics depend on the batch: their gradient flows too
                n = upstream.shape[0]
                upstream = (inv_std / n) * (
                    n * d_normalized
                    - d_normalized.sum(axis=0)
                    - normalized * (d_normalized * normalized).sum(axis=0)
                )
            else:
                upstream = d_normalized * inv_std
        else:  # ReLU
            upstream = upstream * (inputs > 0)
            continue
        for role in ROLES:
            position_grads[param_name(path, role)] = contribution[role]
            grads[spec.owner_of(param_name(path, role))] += contribution[role]
    ordered = {name: position_grads[name] for p in spec.params for name in p.positions}
    return Backward(loss.value(y), y, grads, ordered, done.state, done.uses)


def run(
    spec: ModelSpec,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    state: Mapping[str, np.ndarray] | None = None,
    mode: str = "inference",
    conventions: Conventions = Conventions(),
    uses: Mapping[str, int] | None = None,
) -> Pass:
    """The forward pass, with everything ``backward`` and ``generate.bounds`` read from it."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}, but should be one of {MODES}")
    h = np.asarray(x) if spec.input_kind == "ids" else np.asarray(x, dtype=np.float64)
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    running = {
        name: np.asarray(value, dtype=np.float64)
        for name, value in (initial_state(spec) if state is None else state).items()
    }
    counts = {layer_name(slot.owner): 0 for slot in spec.norm_slots} | dict(uses or {})
    tape, updates, reached = [], [], []
    trainable_before = False  # a trainable parameter is used at an earlier position
    for path, layer in spec.walk():
        inputs, saved = h, None
        if isinstance(layer, Embedding):
            h = np.asarray(weights[param_name(path, "weight")], dtype=np.float64)[h]
        elif isinstance(layer, Dense):
            w = np.asarray(weights[spec.owner_of(param_name(path, "weight"))], dtype=np.float64)
            b = np.asarray(weights[spec.owner_of(param_name(path, "bias"))], dtype=np.float64)
            h = h @ w.T + b
        elif isinstance(layer, BatchNorm):
            h, saved, update = _batchnorm(layer, owners[path], weights, running, counts, h, mode, conventions)
            if update is not None:
                update = Update(layer_name(owners[path]), path, *update)
                updates.append(update)
                reached.append(layer.trainable or trainable_before)
                if conventions.statistics_update == "forward":
                    _apply(running, update)
        else:
            h = np.maximum(h, 0.0)
        trainable_before |= isinstance(layer, Embedding | Dense | BatchNorm) and layer.trainable
        tape.append((path, layer, inputs, saved))
    if conventions.statistics_update == "backward":  # the backward pass, last use first
        updates = [update for update, hit in zip(updates, reached, strict=True) if hit][::-1]
        for update in updates:
            _apply(running, update)
    new_state = {name: value.astype(np.float32) for name, value in running.items()}
    return Pass(h, tape, new_state, counts, updates)


def _apply(running: dict[str, np.ndarray], update: Update) -> None:
    for role, value in (("running_mean", update.mean), ("running_var", update.stored_var)):
        name = f"{update.owner}.{role}"
        running[name] = (1 - update.momentum) * running[name] + update.momentum * value


def _batchnorm(layer, owner, weights, running, counts, h, mode, conventions):
    """One BatchNorm use: its output, what it saved, and the update it makes to the running
    statistics in training mode ((momentum, mean, stored variance, batch), else None)."""
    momentum, eps = conventions.settings(layer)
    gamma = np.asarray(weights[param_name(owner, "weight")], dtype=np.float64)
    beta = np.asarray(weights[param_name(owner, "bias")], dtype=np.float64)
    name = layer_name(owner)
    frozen_as_inference = not layer.trainable and conventions.frozen_batchnorm == "inference"
    update, debias, uses = None, 1.0, 0
    if mode == "training" and not frozen_as_inference:
        n = h.shape[0]
        mean, var = h.mean(axis=0), h.var(axis=0)
        stored_var = var * n / (n - 1) if conventions.unbiased_running_var and n > 1 else var
        update = (momentum, mean, stored_var, n)
        counts[name] += 1
        batch_stats = True
    else:
        if conventions.inference_debias == "use_count" and counts[name] > 0:
            uses = counts[name]
            debias = 1.0 - (1.0 - momentum) ** uses
        mean = running[f"{name}.running_mean"] / debias
        var = running[f"{name}.running_var"] / debias
        batch_stats = False
    inv_std = 1.0 / np.sqrt(var + eps)
    normalized = (h - mean) * inv_std
    saved = Normalized(normalized, inv_std, mean, var, batch_stats, debias, uses)
    return normalized * gamma + beta, saved, update


class Trained(NamedTuple):
    """What ``train`` ends with: the losses before each step, then the state after the last."""

    losses: np.ndarray
    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    uses: dict[str, int]


def train(
    spec: ModelSpec,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    loss: Loss,
    lr: float,
    steps: int,
    *,
    state: Mapping[str, np.ndarray] | None = None,
    conventions: Conventions = Conventions(),
    uses: Mapping[str, int] | None = None,
) -> Trained:
    """``steps`` steps of plain SGD in training mode: the losses before each step, and the
    parameters, running statistics and use counts after the last. A frozen parameter is never
    updated."""
    frozen = {p.name for p in spec.params if not p.trainable}
    current = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
    running = dict(initial_state(spec) if state is None else state)
    losses = []
    for _ in range(steps):
        result = backward(
            spec, current, x, loss, state=running, mode="training", conventions=conventions, uses=uses
        )
        losses.append(result.loss)
        running, uses = result.state, result.uses
        current = {
            name: value if name in frozen else value - lr * result.grads[name]
            for name, value in current.items()
        }
    return Trained(np.asarray(losses), current, running, dict(uses or {}))


def sample_input(spec: ModelSpec, batch: int = 2, seed: int = 1) -> np.ndarray:
    """The book's ``torch.rand(2, in_features)``, seeded; for a model of ids, ``batch`` ids drawn
    from the first half of the vocabulary, so that a batch of more than vocab / 2 repeats some
    (a repeated id is what the embedding's scatter-add gradient is about)."""
    rng = np.random.default_rng(seed)
    if spec.input_kind == "ids":
        return rng.integers(0, max(1, spec.embed_slot.vocab // 2), size=batch).astype(np.int64)
    return rng.uniform(size=(batch, spec.in_features)).astype(np.float32)


def expand_tied(spec: ModelSpec, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights of ``spec`` rewritten for ``spec.untied()``: every position gets its own copy."""
    return {name: np.array(weights[p.name]) for p in spec.params for name in p.positions}
