"""D2L 6.3 in MLX: a fresh nn.Linear (its weight and bias drawn from U(-a, a), a = sqrt(1 /
input_dims), at construction) or the book's schemes through mlx.nn.init, assigned to the layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.core.initializers import Initializers, Scheme


class MlxInitializers(Initializers):
    def __init__(self) -> None:
        import mlx.core as mx
        import mlx.nn as nn

        self.mx, self.nn = mx, nn

    def _weight(self, scheme: Scheme, weight: Any) -> Any:
        mx, init, law = self.mx, self.nn.init, scheme.weight
        if law.kind == "constant":
            return init.constant(law.scale.value)(weight)
        if law.kind == "normal":
            return init.normal(mean=0.0, std=law.scale.value)(weight)
        if law.kind == "uniform":  # the book's Xavier: a sum of fans, so either layout
            return init.glorot_uniform()(weight)
        if law.kind == "zeroed_uniform":
            data = init.uniform(-law.scale.value, law.scale.value)(weight)
            return data * (mx.abs(data) >= law.cut)
        raise NotImplementedError(f"no MLX initializer for {law.text}")

    def dense(self, fan_in: int, fan_out: int, seed: int, scheme: Scheme | None = None) -> tuple[Any, Any]:
        mx = self.mx
        mx.random.seed(seed)
        layer = self.nn.Linear(fan_in, fan_out)
        if scheme is not None:
            layer.weight = self._weight(scheme, layer.weight)
            layer.bias = self.nn.init.constant(scheme.bias.scale.value)(layer.bias)
        mx.eval(layer.parameters())
        return np.array(layer.weight), np.array(layer.bias)
