"""The hand-written Keras 3 on TensorFlow training loop ``make bench`` holds the adapter against:
what a practitioner writes, on TensorFlow's natural fast path (one tf.function step, GradientTape)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from backends._keras_common import tf_make_handwritten
from common.commands.bench import HandwrittenLoop


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """The book's tied MLP (or any flat spec of Dense, ReLU and BatchNorm, frozen layers too), set
    up (and compiled) once; the loop's ``run(steps)`` trains it further with plain SGD, the net
    in training mode, and returns the losses."""
    return tf_make_handwritten(keras, tf, spec, weights, x, y, lr)
