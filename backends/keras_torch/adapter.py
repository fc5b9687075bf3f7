"""Keras 3 on PyTorch adapter: keras.Sequential of Dense / ReLU; a tie reuses one layer object.

Everything Keras shares lives in backends._keras_common; here is PyTorch's part. Each Keras
variable keeps its value as a torch Parameter (``variable.value``), and autograd stores the
gradient there, as on any Parameter: that is where Keras' own torch trainer reads it. Training is
Keras' guide to a custom torch training loop: eager autograd, ``optimizer.apply`` under no_grad,
one Keras SGD per model; losses and watched gradients stay tensors until the last step. A net
with a BatchNormalization runs with ``training=True``, so it assigns its moving statistics (under
no_grad, as Keras' torch variables do); a frozen layer's Parameters have requires_grad False, so
they get no .grad and are never passed to the optimizer.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import torch

from backends._keras_common import KerasBackendBase
from common.core.interface import Model
from common.core.oracle import Loss


class KerasTorchBackend(KerasBackendBase):
    name = "keras_torch"

    def __init__(self) -> None:
        super().__init__(keras, torch)

    def to_numpy(self, value: Any) -> np.ndarray:
        # Not keras.ops.convert_to_numpy: it calls np.array(tensor), which numpy 2 warns about.
        tensor = value.value if isinstance(value, keras.Variable) else value
        return tensor.detach().cpu().numpy().astype(np.float32, copy=True)

    def param_location(self, model: Model, position: str) -> tuple[str, int]:
        tensor = self.param_object(model, position).value  # a tie: one variable, one Parameter
        return tensor.device.type, tensor.data_ptr()

    def stored_grad(self, model: Model, param: Any) -> Any:
        return param.value.grad  # the torch Parameter inside the Keras variable

    # -- gradients and training ------------------------------------------------------------------
    @staticmethod
    def _training(model: Model) -> dict[str, bool]:
        """``training=True`` where a layer reads it (a BatchNormalization), else no argument: the
        same computation, and on this eager engine an explicit training argument costs ~20% of a
        step of the tied MLP (3.5 -> 4.2 ms here, in Layer.__call__'s argument handling)."""
        return {"training": True} if model.spec.has_batchnorm else {}

    @staticmethod
    def _target(loss: Loss) -> torch.Tensor | None:
        return None if loss.target is None else torch.from_numpy(np.asarray(loss.target, np.float32))

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        model.native.zero_grad(set_to_none=True)  # .grad accumulates across backward calls
        y = model.native(torch.from_numpy(x), **self._training(model))  # moving statistics assigned
        self.loss_value(y, loss.kind, self._target(loss)).backward()
        # A tied variable is one Parameter, into whose .grad autograd already summed every use.
        return {name: self.to_numpy(v.value.grad) for name, v in self.unique_variables(model)}

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        net = model.native
        unique = self.unique_variables(model)
        variables = [v for _, v in unique]  # each unique variable once: a tie is updated once
        optimizer = self.sgd(model, lr, variables)
        inputs, target, training = torch.from_numpy(x), self._target(loss), self._training(model)
        losses, grads = [], []
        for _ in range(steps):
            value = self.loss_value(net(inputs, **training), loss.kind, target)
            net.zero_grad(set_to_none=True)
            value.backward()
            applied = [v.value.grad for v in variables]
            losses.append(value.detach())
            if watch:
                grads.append(torch.cat([g.reshape(-1) for g in applied]))  # a copy, one row per step
            with torch.no_grad():
                optimizer.apply(applied, variables)
        watched = self.split_watched(torch.stack(grads).numpy(), unique) if watch else {}
        return torch.stack(losses).numpy().astype(np.float64), watched
