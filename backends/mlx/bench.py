"""The hand-written MLX training loop ``make bench`` holds the adapter against: MLX's documented
compiled training step (``partial(mx.compile, inputs=state, outputs=state)`` over
``[model.state, optimizer.state]``, ``nn.value_and_grad``, ``optimizer.update``, then
``mx.eval(state)`` after each step), as a practitioner writes it.

On the tied model ``nn.value_and_grad`` gives the shared nn.Linear one gradient leaf per position
(the first zeros, the last the whole sum) and ``optimizer.update`` writes the module once per
position, the last write winning: plain SGD still moves it by the summed gradient once, so this
loop and the adapter (which differentiates a tree holding the shared module once) are the same
computation.

A BatchNorm is ``nn.BatchNorm`` (MLX's momentum is the canonical one), the model in
``model.train()`` mode: its running statistics are arrays of ``model.state``, so the compiled step
carries them out with the parameters. A frozen layer is ``module.freeze()``: its arrays leave
``trainable_parameters()``, which ``nn.value_and_grad`` differentiates and the optimizer updates."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from common.commands.bench import HandwrittenLoop
from common.core.spec import Dense, param_name


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """Any flat spec of Dense, BatchNorm and ReLU, ties and frozen layers included, set up (and
    compiled) once; ``run(steps)`` trains it further with plain SGD and returns the losses."""
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    widths = {slot.path: slot.in_features for slot in spec.dense_slots}
    features = {slot.path: slot.features for slot in spec.norm_slots}
    made, layers = {}, []
    for path, layer in spec.walk():
        owner = owners.get(path)
        if owner is None:
            layers.append(nn.ReLU())
            continue
        if owner not in made:
            if isinstance(layer, Dense):
                module = nn.Linear(widths[path], layer.units)
            else:
                settings = {"momentum": layer.momentum, "eps": layer.eps}
                module = nn.BatchNorm(features[path], **{k: v for k, v in settings.items() if v is not None})
            module.update(
                {
                    "weight": mx.array(weights[param_name(owner, "weight")]),
                    "bias": mx.array(weights[param_name(owner, "bias")]),
                }
            )
            if not spec.trainable_at(owner):
                module.freeze()
            made[owner] = module
        layers.append(made[owner])
    model = nn.Sequential(*layers)
    model.train()  # read when the step is traced: batch statistics, running ones updated
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

    def running_stats() -> dict[str, np.ndarray]:
        return {p.name: np.array(made[p.owner][p.role]) for p in spec.state}

    return HandwrittenLoop(run, running_stats)
