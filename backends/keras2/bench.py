"""The hand-written tf-keras 2 training loop ``make bench`` holds the adapter against: what a
practitioner writes, on TensorFlow's natural fast path (one tf.function step, GradientTape). The
net has an explicit keras.Input: without one, tf-keras runs a layer added twice once."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from backends._keras_common import tf_make_handwritten
from common.commands.bench import HandwrittenLoop


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """The book's tied MLP (or any flat spec of Dense, ReLU and BatchNorm, frozen layers too), set
    up (and compiled) once; the loop's ``run(steps)`` trains it further with plain SGD, the net
    in training mode, and returns the losses."""
    return tf_make_handwritten(keras, tf, spec, weights, x, y, lr, input_layer=True)
