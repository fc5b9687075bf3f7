"""The hand-written PyTorch training loop ``make bench`` holds the adapter against: what a
practitioner writes, on torch's natural fast path (eager autograd, torch.optim.SGD, no sync per
step). A BatchNorm is ``nn.BatchNorm1d`` (torch's momentum is the canonical one), the net in
``net.train()`` mode; a frozen layer is ``requires_grad_(False)`` and SGD is given the parameters
that still require a gradient."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.commands.bench import HandwrittenLoop
from common.core.spec import BatchNorm, Dense, param_name


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """Any flat spec of Dense, BatchNorm and ReLU, ties and frozen layers included, set up once;
    ``run(steps)`` trains it further with plain SGD and returns the losses."""
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    made: dict[tuple[int, ...], nn.Module] = {}
    layers = []
    for path, layer in spec.walk():
        if not isinstance(layer, Dense | BatchNorm):
            layers.append(nn.ReLU())
            continue
        owner = owners[path]
        if owner not in made:
            weight = torch.from_numpy(weights[param_name(owner, "weight")])
            if isinstance(layer, Dense):
                module = nn.Linear(weight.shape[1], weight.shape[0])
            else:
                settings = {"momentum": layer.momentum, "eps": layer.eps}
                module = nn.BatchNorm1d(
                    weight.shape[0], **{k: v for k, v in settings.items() if v is not None}
                )
            with torch.no_grad():
                module.weight.copy_(weight)
                module.bias.copy_(torch.from_numpy(weights[param_name(owner, "bias")]))
            module.requires_grad_(layer.trainable)
            made[owner] = module
        layers.append(made[owner])
    net = nn.Sequential(*layers).train()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
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

    def running_stats() -> dict[str, np.ndarray]:
        return {p.name: getattr(made[p.owner], p.role).numpy().copy() for p in spec.state}

    return HandwrittenLoop(run, running_stats)
