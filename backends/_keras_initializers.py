"""D2L 6.3 in every Keras (3 on any engine, and tf-keras 2): a fresh Dense built on (None, fan_in),
with its defaults (kernel GlorotUniform, bias Zeros) or with the book's kernel_initializer and
bias_initializer, its custom one an Initializer subclass, as the book's TensorFlow tab does."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from common.core.initializers import Initializers, Scheme

# (shape, low, high, dtype, seed) -> a uniform tensor: keras.random.uniform, or tf.random.uniform
Uniform = Callable[[Any, float, float, Any, int], Any]


class KerasInitializers(Initializers):
    def __init__(self, keras: Any, ops: Any, uniform: Uniform, to_numpy: Callable[[Any], Any]) -> None:
        self.keras = keras  # keras (3) or tf_keras (2)
        self.ops = ops  # keras.ops or tensorflow: abs and cast, by the same names
        self.uniform = uniform
        self.to_numpy = to_numpy  # a variable's value as a numpy array

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        # An unseeded Keras initializer draws its seed from Python's `random`: seed that, locally.
        saved = random.getstate()
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(saved)

    def _kernel(self, scheme: Scheme) -> Any:
        initializers, law, ops, uniform = self.keras.initializers, scheme.weight, self.ops, self.uniform
        if law.kind == "constant":
            return initializers.Constant(law.scale.value)
        if law.kind == "normal":
            return initializers.RandomNormal(mean=0.0, stddev=law.scale.value)
        if law.kind == "uniform":  # the book's Xavier
            return initializers.GlorotUniform()
        if law.kind == "zeroed_uniform":

            class MyInit(initializers.Initializer):  # the book's MyInit
                def __call__(self, shape: Any, dtype: Any = None) -> Any:
                    dtype = dtype or "float32"
                    data = uniform(shape, -law.scale.value, law.scale.value, dtype, random.randrange(2**31))
                    return data * ops.cast(ops.abs(data) >= law.cut, dtype)

            return MyInit()
        raise NotImplementedError(f"no Keras initializer for {law.text}")

    def dense(self, fan_in: int, fan_out: int, seed: int, scheme: Scheme | None = None) -> tuple[Any, Any]:
        with self._seeded(seed):
            inits = {}
            if scheme is not None:
                inits = {
                    "kernel_initializer": self._kernel(scheme),
                    "bias_initializer": self.keras.initializers.Constant(scheme.bias.scale.value),
                }
            layer = self.keras.layers.Dense(fan_out, **inits)
            layer.build((None, fan_in))
        return np.array(self.to_numpy(layer.kernel)).T, np.array(self.to_numpy(layer.bias))
