"""The book's D2L 6.3 schemes as jax.nn.initializers, which Flax (linen and NNX) re-exports and
Equinox's own docs use to re-initialize a layer: one mapping for every library on JAX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from common.core.initializers import Law, Scheme

Init = Callable[..., Any]  # (key, shape, dtype) -> array


def weight_init(scheme: Scheme, *, in_axis: int = -2, out_axis: int = -1) -> Init:
    """The scheme's weight initializer; the axes say where the fans are (a Flax kernel is (in,
    out), jax's default; an Equinox weight (out, in))."""
    law, init = scheme.weight, jax.nn.initializers
    if law.kind == "constant":
        return init.constant(law.scale.value)
    if law.kind == "normal":
        return init.normal(stddev=law.scale.value)
    if law.kind == "uniform":  # the book's Xavier
        return init.xavier_uniform(in_axis=in_axis, out_axis=out_axis)
    if law.kind == "zeroed_uniform":
        return _my_init(law)
    raise NotImplementedError(f"no jax initializer for {law.text}")


def _my_init(law: Law) -> Init:
    def my_init(key: Any, shape: Any, dtype: Any = jnp.float32) -> Any:  # the book's JAX my_init
        data = jax.random.uniform(key, shape, dtype, minval=-law.scale.value, maxval=law.scale.value)
        return data * (jnp.abs(data) >= law.cut)

    return my_init


def bias_init(scheme: Scheme) -> Init:
    return jax.nn.initializers.constant(scheme.bias.scale.value)
