"""The hand-written Flax NNX training loop ``make bench`` holds the adapter against: the
"functional training loop" of Flax's performance guide (nnx.split once, jax.jit over the state,
nnx.merge inside), NNX's fastest documented form of ``@nnx.jit train_step(model, optimizer, ...)``.
A BatchNorm is ``nnx.BatchNorm`` (Flax's momentum is the weight of the old value: 1 - the
canonical one), the model in ``model.train()`` mode, its ``BatchStat`` variables carried in the
split state; freezing is the filter of NNX's transfer-learning guide, given to
``nnx.Optimizer(wrt=...)`` and to the gradient (``nnx.DiffState``). An Embedding is ``nnx.Embed``,
and the output tied to it a small module holding that very Embed, which applies its ``attend``
plus a bias of its own (Flax's idiom for tied logits); the graph holds the table once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from backends._flax_common import ROLE_NAMES
from common.commands.bench import HandwrittenLoop
from common.core.spec import Dense, Embedding


class TiedOutput(nnx.Module):
    """The output Linear tied to ``embedding``: its table applied transposed (``attend``) plus a
    bias of its own."""

    def __init__(self, embedding: nnx.Embed, units: int) -> None:
        self.embedding = embedding
        self.bias = nnx.Param(jnp.zeros((units,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.embedding.attend(x) + self.bias[...]


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """Any flat spec of Embedding, Dense, BatchNorm and ReLU, ties (the transposed one too) and
    frozen layers included, set up (and compiled) once; ``run(steps)`` trains it further with
    plain SGD and returns the losses."""
    rngs, made, layers = nnx.Rngs(0), {}, []
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    widths = {slot.path: slot.in_features for slot in spec.dense_slots}
    tables = {slot.path: slot.table for slot in spec.dense_slots if slot.table is not None}
    features = {slot.path: slot.features for slot in spec.norm_slots}
    for path, layer in spec.walk():
        owner = owners.get(path)
        if owner is None:
            layers.append(nnx.relu)
            continue
        if owner not in made and isinstance(layer, Embedding):
            made[owner] = nnx.Embed(layer.vocab, layer.dim, rngs=rngs)
        elif owner not in made and path in tables:
            made[owner] = TiedOutput(made[tables[path]], layer.units)
        elif owner not in made and isinstance(layer, Dense):
            made[owner] = nnx.Linear(widths[path], layer.units, rngs=rngs)
        elif owner not in made:
            settings = {
                "momentum": None if layer.momentum is None else 1 - layer.momentum,
                "epsilon": layer.eps,
            }
            chosen = {k: v for k, v in settings.items() if v is not None}
            made[owner] = nnx.BatchNorm(features[path], rngs=rngs, **chosen)
        layers.append(made[owner])
    for p in spec.params:  # unique: a tied output's weight is the table, set with its Embed
        native = ROLE_NAMES[p.kind][p.role]
        value = weights[p.name].T if native == "kernel" else weights[p.name]  # a kernel is (in, out)
        getattr(made[p.owner], native)[...] = jnp.asarray(value)
    model = nnx.Sequential(*layers)
    model.train()  # every BatchNorm normalizes by the batch and updates its statistics
    # A layer's parameters sit at ("layers", its first index, name): the frozen ones by that index.
    frozen = [nnx.PathContains(owner[0]) for owner in made if not spec.trainable_at(owner)]
    trainable = nnx.All(nnx.Param, nnx.Not(nnx.Any(*frozen))) if frozen else nnx.Param
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=trainable)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(graphdef, state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss_fn = lambda model: jnp.mean((model(x) - y) ** 2)  # noqa: E731
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    inputs, targets = jnp.asarray(x), jnp.asarray(y)
    carry = {"state": state}

    def run(steps: int) -> np.ndarray:
        state, losses = carry["state"], []
        for _ in range(steps):
            state, loss = train_step(graphdef, state, inputs, targets)
            losses.append(loss)
        carry["state"] = state
        nnx.update((model, optimizer), state)
        return np.asarray(jnp.stack(losses))

    def running_stats() -> dict[str, np.ndarray]:
        return {
            p.name: np.asarray(getattr(made[p.owner], ROLE_NAMES[p.kind][p.role])[...]) for p in spec.state
        }

    return HandwrittenLoop(run, running_stats)
