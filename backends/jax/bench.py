"""The hand-written Flax linen training loop ``make bench`` holds the adapter against: what a
practitioner writes, on JAX's natural fast path (one jax.jit step with optax SGD, no sync per step)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> Callable[[int], np.ndarray]:
    """The book's tied MLP (or any flat Dense/ReLU spec), set up (and compiled) once; the returned
    ``run(steps)`` trains it further with plain SGD and returns the losses."""
    shared, layers, params = {}, [], {}
    for slot in spec.dense_slots:
        index = slot.owner[0]
        if index not in shared:
            shared[index] = nn.Dense(slot.units)
            # linen names a submodule where it is first adopted: layers_<first index>, kernel (in, out).
            params[f"layers_{index}"] = {
                "kernel": jnp.asarray(weights[f"layers.{index}.weight"].T),
                "bias": jnp.asarray(weights[f"layers.{index}.bias"]),
            }
        layers += [shared[index], nn.relu]
    net = nn.Sequential(layers[:-1])
    optimizer = optax.sgd(lr)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(params):
            return jnp.mean((net.apply({"params": params}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    inputs, targets = jnp.asarray(x), jnp.asarray(y)
    state = {"params": params, "opt_state": opt_state}

    def run(steps: int) -> np.ndarray:
        params, opt_state = state["params"], state["opt_state"]
        losses = []
        for _ in range(steps):
            params, opt_state, loss = train_step(params, opt_state, inputs, targets)
            losses.append(loss)
        state.update(params=params, opt_state=opt_state)
        return np.asarray(jnp.stack(losses))

    return run
