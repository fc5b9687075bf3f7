"""D2L 6.3 in Equinox: a fresh eqx.nn.Linear (weight and bias from U(-a, a), a = 1 / sqrt(in_features),
drawn at construction from its key). eqx.nn.Linear takes no initializer; Equinox's documented way
is to replace the arrays with eqx.tree_at, drawn by jax.nn.initializers: so the book's schemes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from backends._jax_initializers import bias_init, weight_init
from common.core.initializers import Initializers, Scheme


class EquinoxInitializers(Initializers):
    def __init__(self) -> None:
        import equinox as eqx
        import jax

        self.eqx, self.jax = eqx, jax

    @functools.cache  # noqa: B019 (one instance per process): compiled once per size and scheme
    def _build(self, fan_in: int, fan_out: int, scheme: Scheme | None) -> Callable[[Any], Any]:
        eqx, jax = self.eqx, self.jax

        def build(key: Any) -> tuple[Any, Any]:
            layer_key, weight_key, bias_key = jax.random.split(key, 3)
            layer = eqx.nn.Linear(fan_in, fan_out, key=layer_key)
            if scheme is not None:
                weight = weight_init(scheme, in_axis=-1, out_axis=-2)(weight_key, layer.weight.shape)
                bias = bias_init(scheme)(bias_key, layer.bias.shape)
                layer = eqx.tree_at(lambda linear: (linear.weight, linear.bias), layer, (weight, bias))
            return layer.weight, layer.bias

        return jax.jit(build)

    def dense(self, fan_in: int, fan_out: int, seed: int, scheme: Scheme | None = None) -> tuple[Any, Any]:
        weight, bias = self._build(fan_in, fan_out, scheme)(self.jax.random.PRNGKey(seed))
        return np.asarray(weight).copy(), np.asarray(bias).copy()
