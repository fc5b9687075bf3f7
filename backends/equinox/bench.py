"""The hand-written Equinox training loop ``make bench`` holds the adapter against: the book's tied
MLP with ``eqx.nn.Shared``, trained the fastest documented way. That is the "low-overhead training
loop" of Equinox's Tricks page (the model flattened once, so no step flattens its PyTree), with
plain ``jax.jit`` over the parameter arrays (``eqx.partition`` once, ``eqx.combine`` inside),
which Equinox's docs allow: on this MLP ``eqx.filter_jit``'s own dispatch costs 3x the step
(measured: 240 against 75 us a step)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> Callable[[int], np.ndarray]:
    """The book's tied MLP (or any flat Dense/ReLU spec with ties), set up (and compiled) once;
    the returned ``run(steps)`` trains it further with plain SGD and returns the losses."""
    keys = iter(jax.random.split(jax.random.PRNGKey(0), len(spec.dense_slots)))
    owners = {slot.path: slot.owner for slot in spec.dense_slots}
    layers: list[eqx.Module] = []
    for path, _ in spec.walk():
        if path not in owners:
            layers.append(eqx.nn.Lambda(jax.nn.relu))
        elif owners[path] != path:
            layers.append(layers[owners[path][0]])  # replaced by eqx.nn.Shared below
        else:
            name = f"layers.{path[0]}"
            weight, bias = jnp.asarray(weights[f"{name}.weight"]), jnp.asarray(weights[f"{name}.bias"])
            linear = eqx.nn.Linear(weight.shape[1], weight.shape[0], key=next(keys))
            layers.append(eqx.tree_at(lambda linear: (linear.weight, linear.bias), linear, (weight, bias)))
    users = [path[0] for path, owner in owners.items() if owner != path]
    model = eqx.nn.Shared(
        eqx.nn.Sequential(layers),
        where=lambda net: tuple(net.layers[i] for i in users),
        get=lambda net: tuple(net.layers[owners[(i,)][0]] for i in users),
    )
    params, static = eqx.partition(model, eqx.is_array)
    flat_params, treedef = jax.tree_util.tree_flatten(params)

    @jax.jit
    def make_step(flat_params, x, y):
        def loss_fn(flat_params):
            model = eqx.combine(jax.tree_util.tree_unflatten(treedef, flat_params), static)
            return jnp.mean((jax.vmap(model())(x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(flat_params)
        return eqx.apply_updates(flat_params, [-lr * g for g in grads]), loss

    inputs, targets = jnp.asarray(x), jnp.asarray(y)
    carry = {"flat_params": flat_params}

    def run(steps: int) -> np.ndarray:
        flat_params, losses = carry["flat_params"], []
        for _ in range(steps):
            flat_params, loss = make_step(flat_params, inputs, targets)
            losses.append(loss)
        carry["flat_params"] = flat_params
        return np.asarray(jnp.stack(losses))

    return run
