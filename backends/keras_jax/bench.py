"""The hand-written Keras 3 on JAX training loop ``make bench`` holds the adapter against: Keras'
own custom-JAX-training-loop pattern (jax.jit around stateless_call and stateless_apply)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np

from backends._keras_common import bench_net, bench_running_stats
from common.commands.bench import HandwrittenLoop


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """The book's tied MLP (or any flat spec of Dense, ReLU and BatchNorm, frozen layers too), set
    up (and compiled) once; the loop's ``run(steps)`` trains it further with plain SGD, the net
    in training mode, and returns the losses."""
    net, made = bench_net(keras, spec, weights)
    optimizer = keras.optimizers.SGD(learning_rate=lr)
    optimizer.build(net.trainable_variables)

    def compute_loss(trainable, non_trainable, inputs, targets):
        outputs, non_trainable = net.stateless_call(trainable, non_trainable, inputs, training=True)
        return jnp.mean((outputs - targets) ** 2), non_trainable

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    @jax.jit
    def train_step(state, inputs, targets):
        trainable, non_trainable, optimizer_variables = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, inputs, targets)
        trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
        return loss, (trainable, non_trainable, optimizer_variables)

    inputs, targets = jnp.asarray(x), jnp.asarray(y)
    held = {
        "state": (
            [v.value for v in net.trainable_variables],
            [v.value for v in net.non_trainable_variables],
            [v.value for v in optimizer.variables],
        )
    }

    def run(steps: int) -> np.ndarray:
        state, losses = held["state"], []
        for _ in range(steps):
            loss, state = train_step(state, inputs, targets)
            losses.append(loss)
        held["state"] = state
        return np.asarray(jnp.stack(losses))

    # The moving statistics stay on JAX's side, in the state's non-trainable values.
    place = {id(v): i for i, v in enumerate(net.non_trainable_variables)}
    return HandwrittenLoop(run, bench_running_stats(spec, made, lambda v: held["state"][1][place[id(v)]]))
