"""The hand-written tf-keras 2 training loop ``make bench`` holds the adapter against: what a
practitioner writes, on TensorFlow's natural fast path (one tf.function step, GradientTape). The
net has an explicit keras.Input: without one, tf-keras runs a layer added twice once. tf-keras has
no ReversibleEmbedding: an Embedding is ``keras.layers.Embedding``, and the output tied to it a
small layer holding that embedding, which reads its table at every call with
``tf.matmul(x, embedding.embeddings, transpose_b=True)`` and adds a bias of its own."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from backends._keras_common import tf_make_handwritten
from common.commands.bench import HandwrittenLoop


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """Any flat spec of Embedding, Dense, ReLU and BatchNorm, ties (the transposed one too) and
    frozen layers included, set up (and compiled) once; the loop's ``run(steps)`` trains it
    further with plain SGD, the net in training mode, and returns the losses."""
    return tf_make_handwritten(
        keras,
        tf,
        spec,
        weights,
        x,
        y,
        lr,
        input_layer=True,
        new_embedding=keras.layers.Embedding,
        project=read_table_transposed,
    )


def read_table_transposed(embedding, x):
    """The tied output's product: ``x @ table.T``, the table read where the embedding holds it."""
    return tf.matmul(x, embedding.embeddings, transpose_b=True)
