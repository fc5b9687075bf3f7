"""The hand-written Gluon training loop ``make bench`` holds the adapter against: what a
practitioner writes, on Gluon's natural fast path (a hybridized net, gluon.Trainer's SGD over
``net.collect_params()``, no sync per step). A BatchNorm is ``nn.BatchNorm`` (Gluon's momentum is
the weight of the old value: 1 - the canonical one), in training mode inside
``autograd.record()``; a frozen layer's Parameters get ``grad_req = 'null'``, which the Trainer
skips, as it skips the running statistics. An Embedding is ``nn.Embedding`` and the output tied to
it ``nn.Dense(vocab, in_units=dim, params=embedding.params)``, as GluonNLP ties a decoder: the
Dense finds the table as its ``weight`` and makes its own bias."""

from __future__ import annotations

import warnings

import numpy as np

from common.commands.bench import HandwrittenLoop
from common.core.spec import BatchNorm, Dense, Embedding

# MXNet 1.9.1 touches numpy aliases deprecated since numpy 1.20 at import time: dozens of warnings.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mxnet import autograd, gluon, npx
    from mxnet import np as mnp  # not "np": that name is the real numpy here
    from mxnet.gluon import nn

_BATCHNORM_NAMES = {"weight": "gamma", "bias": "beta"}  # Gluon's names for the canonical roles


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """Any flat spec of Embedding, Dense, BatchNorm and ReLU, ties (the transposed one too) and
    frozen layers included, set up (and compiled) once; ``run(steps)`` trains it further with
    plain SGD and returns the losses."""
    npx.set_np()
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    widths = {slot.path: slot.in_features for slot in spec.dense_slots}
    tables = {slot.path: slot.table for slot in spec.dense_slots if slot.table is not None}
    features = {slot.path: slot.features for slot in spec.norm_slots}
    net, made, layers = nn.HybridSequential(), {}, []
    with net.name_scope():
        for path, layer in spec.walk():
            owner = owners.get(path)
            if isinstance(layer, Embedding):
                block = nn.Embedding(layer.vocab, layer.dim)
            elif isinstance(layer, Dense):
                # A tie is a second Dense on the owner's Parameters (D2L 6.2.3), or on the table's.
                source = made.get(owner) or made.get(tables.get(path))
                shared = {"params": source.params} if source is not None else {}
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
    for p in spec.params:  # unique: a tied output's weight is the table, set with the Embedding
        block = made[p.owner]
        param = getattr(block, _BATCHNORM_NAMES[p.role] if isinstance(block, nn.BatchNorm) else p.role)
        param.set_data(mnp.array(weights[p.name]))
        if not p.trainable:
            param.grad_req = "null"
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    inputs, targets = mnp.array(x, dtype=x.dtype), mnp.array(y)  # ids stay int64

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
