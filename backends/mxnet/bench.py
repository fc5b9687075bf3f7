"""The hand-written Gluon training loop ``make bench`` holds the adapter against: what a
practitioner writes, on Gluon's natural fast path (a hybridized net, gluon.Trainer's SGD, no sync per
step)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

# MXNet 1.9.1 touches numpy aliases deprecated since numpy 1.20 at import time: dozens of warnings.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mxnet import autograd, gluon, npx
    from mxnet import np as mnp  # not "np": that name is the real numpy here
    from mxnet.gluon import nn


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> Callable[[int], np.ndarray]:
    """The book's tied MLP (or any flat Dense/ReLU spec), set up (and compiled) once; the returned
    ``run(steps)`` trains it further with plain SGD and returns the losses."""
    npx.set_np()
    net, shared, layers = nn.HybridSequential(), {}, []
    with net.name_scope():
        for slot in spec.dense_slots:
            if slot.owner not in shared:
                shared[slot.owner] = nn.Dense(slot.units, in_units=slot.in_features)
                dense = shared[slot.owner]
            else:  # a tie: a second Dense on the owner's Parameters (D2L 6.2.3)
                dense = nn.Dense(slot.units, in_units=slot.in_features, params=shared[slot.owner].params)
            layers += [dense, nn.Activation("relu")]
    net.add(*layers[:-1])
    net.initialize()
    for path, dense in shared.items():
        dense.weight.set_data(mnp.array(weights[f"layers.{path[0]}.weight"]))
        dense.bias.set_data(mnp.array(weights[f"layers.{path[0]}.bias"]))
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    inputs, targets = mnp.array(x), mnp.array(y)

    def run(steps: int) -> np.ndarray:
        losses = []
        for _ in range(steps):
            with autograd.record():
                loss = ((net(inputs) - targets) ** 2).mean()
            loss.backward()
            trainer.step(1)
            losses.append(loss)
        return mnp.stack(losses).asnumpy()

    return run
