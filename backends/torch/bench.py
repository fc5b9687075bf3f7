"""The hand-written PyTorch training loop ``make bench`` holds the adapter against: what a
practitioner writes, on torch's natural fast path (eager autograd, torch.optim.SGD, no sync per step)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> Callable[[int], np.ndarray]:
    """The book's tied MLP (or any flat Dense/ReLU spec), set up (and compiled) once; the returned
    ``run(steps)`` trains it further with plain SGD and returns the losses."""
    shared, layers = {}, []
    for slot in spec.dense_slots:
        if slot.owner not in shared:
            linear = nn.Linear(slot.in_features, slot.units)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(weights[f"layers.{slot.path[0]}.weight"]))
                linear.bias.copy_(torch.from_numpy(weights[f"layers.{slot.path[0]}.bias"]))
            shared[slot.owner] = linear
        layers += [shared[slot.owner], nn.ReLU()]
    net = nn.Sequential(*layers[:-1])
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)

    def run(steps: int) -> np.ndarray:
        losses = []
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = ((net(inputs) - targets) ** 2).mean()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses).numpy()

    return run
