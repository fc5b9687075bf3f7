"""D2L 6.3 in Keras 3 on any engine (TensorFlow, JAX, PyTorch): backends/_keras_initializers.py
with keras.ops and keras.random. A module of its own: tf-keras (Keras 2) shares the other one and
may not import keras 3."""

from __future__ import annotations

import warnings

from backends._keras_initializers import KerasInitializers


class Keras3Initializers(KerasInitializers):
    def __init__(self) -> None:
        import keras

        def uniform(shape, low, high, dtype, seed):
            return keras.random.uniform(shape, low, high, dtype=dtype, seed=seed)

        def to_numpy(variable):
            with warnings.catch_warnings():
                # On PyTorch, Keras 3.15 converts with np.array(tensor), and numpy 2 warns that
                # torch's __array__ takes no copy keyword: Keras' code, 2366 lines per suite.
                warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
                return keras.ops.convert_to_numpy(variable.value)

        super().__init__(keras, keras.ops, uniform, to_numpy)
