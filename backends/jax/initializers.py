"""D2L 6.3 in Flax linen: a fresh nn.Dense initialized by net.init(key, x) (kernel_init
lecun_normal, a truncated normal; bias_init zeros) or with the book's kernel_init and bias_init."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from backends._jax_initializers import bias_init, weight_init
from common.core.initializers import Initializers, Scheme


class FlaxInitializers(Initializers):
    def __init__(self) -> None:
        import flax.linen as nn
        import jax

        self.jax, self.nn = jax, nn

    @functools.cache  # noqa: B019 (one instance per process): compiled once per size and scheme
    def _init(self, fan_in: int, fan_out: int, scheme: Scheme | None) -> Callable[[Any], Any]:
        inits = {} if scheme is None else {"kernel_init": weight_init(scheme), "bias_init": bias_init(scheme)}
        layer, x = self.nn.Dense(fan_out, **inits), self.jax.numpy.zeros((1, fan_in))
        return self.jax.jit(lambda key: layer.init(key, x)["params"])

    def dense(self, fan_in: int, fan_out: int, seed: int, scheme: Scheme | None = None) -> tuple[Any, Any]:
        params = self._init(fan_in, fan_out, scheme)(self.jax.random.PRNGKey(seed))
        return np.asarray(params["kernel"]).T.copy(), np.asarray(params["bias"]).copy()
