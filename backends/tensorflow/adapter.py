"""TensorFlow / Keras 3 adapter: keras.Sequential of Dense / ReLU; a tie reuses one layer object.

Everything Keras shares lives in backends._keras_common; here is TensorFlow's part: GradientTape
gradients and a tf.function training step (TensorFlowKerasBase).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from backends._keras_common import TensorFlowKerasBase


class KerasBackend(TensorFlowKerasBase):
    name = "tensorflow"

    def __init__(self) -> None:
        super().__init__(keras, tf)
