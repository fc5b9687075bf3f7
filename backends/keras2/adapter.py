"""tf-keras 2 adapter (the Keras the book was written against): Sequential of Dense / ReLU; a tie
reuses one layer object.

tf-keras's ``net.layers`` lists a layer added twice once, and a Sequential left to infer its input
shape builds its graph from that list: the shared Dense then runs once (the book's cell
``Sequential([Flatten(), shared, shared, Dense(1)])`` only works because of it). So a spec with a
tie gets an explicit ``keras.Input`` in every Sequential, which calls each added layer in turn; the
layer at a position is read off that call graph. Untied specs stay lazy, as the book's are.

tf-keras has no ReversibleEmbedding: an Embedding's transposed tie is a TiedProjection (a small
layer, see backends._keras_common) that reads ``embedding.embeddings`` with ``tf.matmul(...,
transpose_b=True)`` at every call.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras

from backends._keras_common import TensorFlowKerasBase
from common.core.interface import Model
from common.core.spec import Dense, Embedding, LayerPath, ModelSpec


def _read_table_transposed(embedding: Any, x: Any) -> Any:
    """x @ table.T, reading the embedding's one variable (tf-keras has no reverse call)."""
    return tf.matmul(x, embedding.embeddings, transpose_b=True)


class Keras2Backend(TensorFlowKerasBase):
    name = "keras2"
    lazy_mechanism = (
        "Dense(units) builds its kernel on the first call; a spec with a tie gets keras.Input, "
        "since a deferred Sequential runs a layer added twice once"
    )

    project_transposed = staticmethod(_read_table_transposed)
    custom_matmul = staticmethod(tf.matmul)  # tf-keras has no keras.ops
    saved_layers_take_a_name = False

    def __init__(self) -> None:
        super().__init__(keras, tf)

    def reset_names(self) -> None:
        keras.backend.clear_session()

    def native_name(self, variable: Any) -> str:
        return variable.name  # "dense/kernel:0": tf-keras variables have no .path

    def new_embedding(self, vocab: int, dim: int) -> Any:
        return keras.layers.Embedding(vocab, dim)

    def tied_output(self, embedding: Any, units: int) -> Any:
        # A tied spec's Sequentials have a keras.Input, so each layer runs as it is added; a block
        # is finished (its TiedProjection run) before the outer Sequential adds the Embedding.
        # Calling the Embedding once builds its table under its own name (found by make fuzz).
        if not embedding.built:
            embedding(tf.zeros((1,), "int64"))
        return super().tied_output(embedding, units)

    def new_sequential(self, spec: ModelSpec, path: LayerPath) -> Any:
        # Deferred, tf-keras builds on the first call and expands its 1-d ids to (batch, 1): a
        # BatchNormalization after the Embedding is then built for 3-d inputs and refuses 2-d.
        if not spec.ties and spec.input_kind == "features":
            return keras.Sequential()
        width = _input_width(spec, path)
        if width is None:  # the block that starts with the Embedding takes the ids
            return keras.Sequential([keras.Input(shape=(), dtype="int64")])
        return keras.Sequential([keras.Input(shape=(width,))])

    def child(self, container: Any, index: int) -> Any:
        if container.outputs is None:  # deferred and not called yet: no graph, no duplicates
            return container.layers[index]
        calls, node = [], container.outputs[0].node
        while not node.is_input:
            calls.append(node.layer)
            (node,) = node.parent_nodes
        return calls[::-1][index]

    def unbuilt_params(self, model: Model) -> dict[str, str]:
        try:
            return super().unbuilt_params(model)
        except ValueError:  # tf-keras raises on net.weights before the first call
            return {}


def _input_width(spec: ModelSpec, path: LayerPath) -> int | None:
    """The width flowing into the block at ``path``: the output of the last Dense (or Embedding)
    before it; None where the block takes the model's ids (nothing runs before its Embedding)."""
    width = None if spec.input_kind == "ids" else spec.in_features
    for position, layer in spec.walk():
        if position[: len(path)] == path:
            break
        if isinstance(layer, Dense):
            width = layer.units
        elif isinstance(layer, Embedding):
            width = layer.dim
    return width
