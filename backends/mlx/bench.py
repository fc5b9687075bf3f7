"""The hand-written MLX training loop ``make bench`` holds the adapter against: MLX's documented
compiled training step (``partial(mx.compile, inputs=state, outputs=state)`` over
``[model.state, optimizer.state]``, ``nn.value_and_grad``, ``optimizer.update``, then
``mx.eval(state)`` after each step), as a practitioner writes it.

On the tied model ``nn.value_and_grad`` gives the shared nn.Linear one gradient leaf per position
(the first zeros, the last the whole sum) and ``optimizer.update`` writes the module once per
position, the last write winning: plain SGD still moves it by the summed gradient once, so this
loop and the adapter (which differentiates a tree holding the shared module once) are the same
computation."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> Callable[[int], np.ndarray]:
    """The book's tied MLP (or any flat Dense/ReLU spec), set up (and compiled) once; the returned
    ``run(steps)`` trains it further with plain SGD and returns the losses."""
    shared, layers = {}, []
    for slot in spec.dense_slots:
        if slot.owner not in shared:
            linear = nn.Linear(slot.in_features, slot.units)
            linear.update(
                {
                    "weight": mx.array(weights[f"layers.{slot.path[0]}.weight"]),
                    "bias": mx.array(weights[f"layers.{slot.path[0]}.bias"]),
                }
            )
            shared[slot.owner] = linear
        layers += [shared[slot.owner], nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    optimizer = optim.SGD(learning_rate=lr)
    optimizer.init(model.trainable_parameters())
    loss_and_grad = nn.value_and_grad(model, lambda x, y: nn.losses.mse_loss(model(x), y, reduction="mean"))
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, y: mx.array) -> mx.array:
        loss, grads = loss_and_grad(x, y)
        optimizer.update(model, grads)
        return loss

    inputs, targets = mx.array(x), mx.array(y)
    mx.eval(state)

    def run(steps: int) -> np.ndarray:
        losses = []
        for _ in range(steps):
            loss = step(inputs, targets)
            mx.eval(loss, state)
            losses.append(loss)
        return np.array(mx.stack(losses))

    return run
