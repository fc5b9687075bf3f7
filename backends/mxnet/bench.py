"""The hand-written Gluon training loop ``make bench`` holds the adapter against: what a
practitioner writes, on Gluon's natural fast path (a hybridized net, gluon.Trainer's SGD over
``net.collect_params()``, no sync per step). A BatchNorm is ``nn.BatchNorm`` (Gluon's momentum is
the weight of the old value: 1 - the canonical one), in training mode inside
``autograd.record()``; a frozen layer's Parameters get ``grad_req = 'null'``, which the Trainer
skips, as it skips the running statistics."""

from __future__ import annotations

import warnings

import numpy as np

from common.commands.bench import HandwrittenLoop
from common.core.spec import BatchNorm, Dense, param_name

# MXNet 1.9.1 touches numpy aliases deprecated since numpy 1.20 at import time: dozens of warnings.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mxnet import autograd, gluon, npx
    from mxnet import np as mnp  # not "np": that name is the real numpy here
    from mxnet.gluon import nn


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """Any flat spec of Dense, BatchNorm and ReLU, ties and frozen layers included, set up (and
    compiled) once; ``run(steps)`` trains it further with plain SGD and returns the losses."""
    npx.set_np()
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    widths = {slot.path: slot.in_features for slot in spec.dense_slots}
    features = {slot.path: slot.features for slot in spec.norm_slots}
    net, made, layers = nn.HybridSequential(), {}, []
    with net.name_scope():
        for path, layer in spec.walk():
            owner = owners.get(path)
            if isinstance(layer, Dense):
                # A tie is a second Dense on the owner's Parameters (D2L 6.2.3).
                shared = {"params": made[owner].params} if owner in made else {}
                block = nn.Dense(layer.units, in_units=widths[path], **shared)
            elif isinstance(layer, BatchNorm):
                settings = {
                    "momentum": None if layer.momentum is None else 1 - layer.momentum,
                    "epsilon": layer.eps,
                }
                chosen = {k: v for k, v in settings.items() if v is not None}
                block = made.get(owner) or nn.BatchNorm(in_channels=features[path], **chosen)
            else:
                layers.append(nn.Activation("relu"))
                continue
            made.setdefault(owner, block)
            layers.append(block)
    net.add(*layers)
    net.initialize()
    for owner, block in made.items():
        scale, shift = (
            (block.weight, block.bias) if isinstance(block, nn.Dense) else (block.gamma, block.beta)
        )
        scale.set_data(mnp.array(weights[param_name(owner, "weight")]))
        shift.set_data(mnp.array(weights[param_name(owner, "bias")]))
        if not spec.trainable_at(owner):
            scale.grad_req = shift.grad_req = "null"
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

    def running_stats() -> dict[str, np.ndarray]:
        npx.waitall()  # the last backward's writes to them are not ordered before this read
        return {p.name: getattr(made[p.owner], p.role).data().asnumpy() for p in spec.state}

    return HandwrittenLoop(run, running_stats)
