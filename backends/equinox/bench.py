"""The hand-written Equinox training loop ``make bench`` holds the adapter against: the book's tied
MLP with ``eqx.nn.Shared``, trained the fastest documented way. That is the "low-overhead training
loop" of Equinox's Tricks page (the model flattened once, so no step flattens its PyTree), with
plain ``jax.jit`` over the parameter arrays (``eqx.partition`` once, ``eqx.combine`` inside),
which Equinox's docs allow: on this MLP ``eqx.filter_jit``'s own dispatch costs 3x the step
(measured: 240 against 75 us a step).

A spec with BatchNorm layers (``eqx.nn.BatchNorm(mode="batch")``) is built with
``eqx.nn.make_with_state`` and its ``eqx.nn.State`` threaded through the step, as Equinox's
stateful example does; frozen layers are left out of what is differentiated by a ``filter_spec``,
as its freezing example does (they stay in the static half, constants of the compiled step)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from common.commands.bench import HandwrittenLoop
from common.core.spec import STATE_ROLES, BatchNorm, Dense


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """The book's tied MLP (or any flat Dense/BatchNorm/ReLU spec with ties and frozen layers),
    set up (and compiled) once, from the framework's initial running statistics; the loop's
    ``run(steps)`` trains it further with plain SGD and returns the losses."""
    keys = iter(jax.random.split(jax.random.PRNGKey(0), len(spec.dense_slots)))
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    layers: list[eqx.Module] = []
    for path, layer in spec.walk():
        if path not in owners:
            layers.append(eqx.nn.Lambda(jax.nn.relu))
        elif owners[path] != path:
            layers.append(layers[owners[path][0]])  # replaced by eqx.nn.Shared below
        else:
            name = f"layers.{path[0]}"
            weight, bias = jnp.asarray(weights[f"{name}.weight"]), jnp.asarray(weights[f"{name}.bias"])
            if isinstance(layer, Dense):
                made = eqx.nn.Linear(weight.shape[1], weight.shape[0], key=next(keys))
            else:  # Equinox's momentum is the weight of the old value: 1 - the canonical one
                settings = {
                    "momentum": None if layer.momentum is None else 1 - layer.momentum,
                    "eps": layer.eps,
                }
                chosen = {k: v for k, v in settings.items() if v is not None}
                made = eqx.nn.BatchNorm(weight.shape[0], axis_name="batch", mode="batch", **chosen)
            layers.append(eqx.tree_at(lambda made: (made.weight, made.bias), made, (weight, bias)))
    users = [path[0] for path, owner in owners.items() if owner != path]
    model = eqx.nn.Shared(
        eqx.nn.Sequential(layers),
        where=lambda net: tuple(net.layers[i] for i in users),
        get=lambda net: tuple(net.layers[owners[(i,)][0]] for i in users),
    )
    stateful = any(isinstance(layer, BatchNorm) for _, layer in spec.walk())
    state = None
    if stateful:
        model, state = eqx.nn.make_with_state(lambda: model)()
    filter_spec = jax.tree_util.tree_map(eqx.is_array, model)
    for path, layer in spec.walk():
        if path in owners and owners[path] == path and not layer.trainable:
            filter_spec = eqx.tree_at(
                lambda spec, i=path[0]: (spec.pytree.layers[i].weight, spec.pytree.layers[i].bias),
                filter_spec,
                replace=(False, False),
            )
    params, static = eqx.partition(model, filter_spec)
    flat_params, treedef = jax.tree_util.tree_flatten(params)

    @jax.jit
    def make_step(flat_params, x, y):
        def loss_fn(flat_params):
            model = eqx.combine(jax.tree_util.tree_unflatten(treedef, flat_params), static)
            return jnp.mean((jax.vmap(model())(x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(flat_params)
        return eqx.apply_updates(flat_params, [-lr * g for g in grads]), loss

    @jax.jit
    def make_stateful_step(flat_params, state, x, y):
        def loss_fn(flat_params):
            model = eqx.combine(jax.tree_util.tree_unflatten(treedef, flat_params), static)
            batched = jax.vmap(model(), axis_name="batch", in_axes=(0, None), out_axes=(0, None))
            prediction, new_state = batched(x, state)
            return jnp.mean((prediction - y) ** 2), new_state

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(flat_params)
        return eqx.apply_updates(flat_params, [-lr * g for g in grads]), state, loss

    inputs, targets = jnp.asarray(x), jnp.asarray(y)
    carry = {"flat_params": flat_params, "state": state}

    def run(steps: int) -> np.ndarray:
        flat_params, state, losses = carry["flat_params"], carry["state"], []
        for _ in range(steps):
            if stateful:
                flat_params, state, loss = make_stateful_step(flat_params, state, inputs, targets)
            else:
                flat_params, loss = make_step(flat_params, inputs, targets)
            losses.append(loss)
        carry["flat_params"], carry["state"] = flat_params, state
        return np.asarray(jnp.stack(losses))

    # A BatchNorm's (mean, var) pair sits in the State under its StateIndex.
    stored = {
        p.name: (model.pytree.layers[p.owner[0]].batch_state_index, STATE_ROLES.index(p.role))
        for p in spec.state
    }

    def running_stats() -> dict[str, np.ndarray]:
        return {name: np.asarray(carry["state"].get(index)[which]) for name, (index, which) in stored.items()}

    return HandwrittenLoop(run, running_stats)
