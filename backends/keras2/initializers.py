"""D2L 6.3 in tf-keras 2: backends/_keras_initializers.py with TensorFlow's ops, as the book's code."""

from __future__ import annotations

from backends._keras_initializers import KerasInitializers


class Keras2Initializers(KerasInitializers):
    def __init__(self) -> None:
        import tensorflow as tf
        import tf_keras

        def uniform(shape, low, high, dtype, seed):
            return tf.random.uniform(shape, low, high, dtype=dtype, seed=seed)

        super().__init__(tf_keras, tf, uniform, lambda variable: variable.numpy())
