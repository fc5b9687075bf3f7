"""D2L 6.3 in Flax NNX: a fresh nnx.Linear (kernel_init lecun_normal, a truncated normal; bias_init
zeros) or one built with the book's kernel_init and bias_init."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from backends._jax_initializers import bias_init, weight_init
from common.core.initializers import Initializers, Scheme


class NNXInitializers(Initializers):
    def __init__(self) -> None:
        import jax
        from flax import nnx

        self.jax, self.nnx = jax, nnx

    @functools.cache  # noqa: B019 (one instance per process): compiled once per size and scheme
    def _build(self, fan_in: int, fan_out: int, scheme: Scheme | None) -> Callable[[Any], Any]:
        nnx = self.nnx
        inits = {} if scheme is None else {"kernel_init": weight_init(scheme), "bias_init": bias_init(scheme)}

        def build(key: Any) -> tuple[Any, Any]:
            layer = nnx.Linear(fan_in, fan_out, rngs=nnx.Rngs(params=key), **inits)
            return layer.kernel[...], layer.bias[...]

        return self.jax.jit(build)

    def dense(self, fan_in: int, fan_out: int, seed: int, scheme: Scheme | None = None) -> tuple[Any, Any]:
        kernel, bias = self._build(fan_in, fan_out, scheme)(self.jax.random.PRNGKey(seed))
        return np.asarray(kernel).T.copy(), np.asarray(bias).copy()
