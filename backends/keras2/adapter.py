"""tf-keras 2 adapter (the Keras the book was written against): Sequential of Dense / ReLU; a tie
reuses one layer object.

tf-keras's ``net.layers`` lists a layer added twice once, and a Sequential left to infer its input
shape builds its graph from that list: the shared Dense then runs once (the book's cell
``Sequential([Flatten(), shared, shared, Dense(1)])`` only works because of it). So a spec with a
tie gets an explicit ``keras.Input`` in every Sequential, which calls each added layer in turn; the
layer at a position is read off that call graph. Untied specs stay lazy, as the book's are.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras

from backends._keras_common import TensorFlowKerasBase
from common.core.interface import Model
from common.core.spec import Dense, LayerPath, ModelSpec


class Keras2Backend(TensorFlowKerasBase):
    name = "keras2"
    lazy_mechanism = (
        "Dense(units) builds its kernel on the first call; a spec with a tie gets keras.Input, "
        "since a deferred Sequential runs a layer added twice once"
    )

    def __init__(self) -> None:
        super().__init__(keras, tf)

    saved_layers_take_a_name = False

    def reset_names(self) -> None:
        keras.backend.clear_session()

    def native_name(self, variable: Any) -> str:
        return variable.name  # "dense/kernel:0": tf-keras variables have no .path

    def new_sequential(self, spec: ModelSpec, path: LayerPath) -> Any:
        if not spec.ties:
            return keras.Sequential()
        return keras.Sequential([keras.Input(shape=(_input_width(spec, path),))])

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


def _input_width(spec: ModelSpec, path: LayerPath) -> int:
    """The width flowing into the block at ``path``: the output of the last Dense before it."""
    width = spec.in_features
    for position, layer in spec.walk():
        if position[: len(path)] == path:
            break
        if isinstance(layer, Dense):
            width = layer.units
    return width
