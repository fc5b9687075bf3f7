"""The hand-written Keras 3 on PyTorch training loop ``make bench`` holds the adapter against: Keras'
own custom-torch-training-loop pattern (eager autograd, optimizer.apply under no_grad)."""

from __future__ import annotations

import keras
import numpy as np
import torch

from backends._keras_common import bench_net, bench_running_stats
from common.commands.bench import HandwrittenLoop


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """The book's tied MLP (or any flat spec of Dense, ReLU and BatchNorm, frozen layers too), set
    up once; the loop's ``run(steps)`` trains it further with plain SGD, a net with a BatchNorm
    called with training=True, and returns the losses."""
    net, made = bench_net(keras, spec, weights)
    optimizer = keras.optimizers.SGD(learning_rate=lr)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    training = {"training": True} if spec.has_batchnorm else {}  # eager: the argument has a cost

    def run(steps: int) -> np.ndarray:
        losses = []
        for _ in range(steps):
            loss = torch.mean((net(inputs, **training) - targets) ** 2)
            net.zero_grad()
            loss.backward()
            trainable_weights = [v for v in net.trainable_weights]
            gradients = [v.value.grad for v in trainable_weights]
            with torch.no_grad():
                optimizer.apply(gradients, trainable_weights)
            losses.append(loss.detach())
        return torch.stack(losses).numpy()

    return HandwrittenLoop(run, bench_running_stats(spec, made, lambda v: v.value.detach().numpy()))
