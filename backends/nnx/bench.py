"""The hand-written Flax NNX training loop ``make bench`` holds the adapter against: the
"functional training loop" of Flax's performance guide (nnx.split once, jax.jit over the state,
nnx.merge inside), NNX's fastest documented form of ``@nnx.jit train_step(model, optimizer, ...)``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> Callable[[int], np.ndarray]:
    """The book's tied MLP (or any flat Dense/ReLU spec), set up (and compiled) once; the returned
    ``run(steps)`` trains it further with plain SGD and returns the losses."""
    rngs, shared, layers = nnx.Rngs(0), {}, []
    for slot in spec.dense_slots:
        if slot.owner not in shared:
            linear = nnx.Linear(slot.in_features, slot.units, rngs=rngs)
            linear.kernel[...] = jnp.asarray(weights[f"layers.{slot.path[0]}.weight"].T)
            linear.bias[...] = jnp.asarray(weights[f"layers.{slot.path[0]}.bias"])
            shared[slot.owner] = linear
        layers += [shared[slot.owner], nnx.relu]
    model = nnx.Sequential(*layers[:-1])
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(graphdef, state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda model: jnp.mean((model(x) - y) ** 2))(model)
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

    return run
