"""TensorFlow / Keras 3 adapter: tf.keras.Sequential of Dense / ReLU; a tie reuses one layer object.

Every position is read through the layer found at that position (``net.layers[i]``, nested
Sequentials included), and sharing is decided by object identity, so a tie is observed, never
assumed from the spec.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from typing import Any

import h5py  # installed with TensorFlow; reads Keras' .weights.h5 without building a model
import numpy as np

from common.core.interface import Backend, GradState, Model, ParamInfo, WeightLayout
from common.core.oracle import Loss
from common.core.spec import (
    ROLES,
    Block,
    Dense,
    Layer,
    LayerPath,
    ModelSpec,
    param_name,
    split_param_name,
)
from common.errors import ParamFileError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # must precede the import: quiets TF's C++ logs
import tensorflow as tf  # noqa: E402

keras = tf.keras  # Keras 3 under TF >= 2.16

_INIT_SEED = 0
_ATTR = {"weight": "kernel", "bias": "bias"}  # canonical role -> Dense attribute
_NO_GRAD = object()


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _to_numpy(value: Any) -> np.ndarray:
    # Copy: .numpy() of a CPU tensor may share its buffer with a variable updated later.
    return np.array(tf.convert_to_tensor(value).numpy(), dtype=np.float32, copy=True)


def _snake_case(name: str) -> str:
    # The rule Keras' saving_lib uses for a layer's group name in a .weights.h5 file.
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class KerasBackend(Backend):
    name = "tensorflow"
    weight_layout = WeightLayout.IN_OUT
    lazy_mechanism = "Dense(units) builds its kernel on the first call (build-on-call)"
    tie_mechanism = "the same Dense layer object at both positions"

    def __init__(self) -> None:
        self._init_seed = _INIT_SEED

    def framework_version(self) -> str:
        return f"{tf.__version__} (keras {keras.__version__})"

    def seed(self, seed: int) -> None:
        self._init_seed = seed  # used by the next build_mlp (see there)

    # -- building --------------------------------------------------------------------------------
    def build_mlp(self, spec: ModelSpec) -> Model:
        # Default names come from a global counter; restart it so names depend on build order only.
        keras.backend.clear_session()
        owners = {slot.path: slot.owner for slot in spec.dense_slots}
        # An unseeded initializer draws its seed from Python's `random` when the layer is created;
        # seed it locally so the initial values are reproducible without touching global state.
        saved = random.getstate()
        random.seed(self._init_seed)
        try:
            net = self._sequential(spec.layers, (), owners, {})
        finally:
            random.setstate(saved)
        layers = {}
        for path, _ in spec.walk():
            layer = net
            for index in path:  # the layer object Keras holds at this position
                layer = layer.layers[index]
            layers[path] = layer
        return Model(spec, net, {"layers": layers})

    def _sequential(
        self,
        layers: tuple[Layer, ...],
        prefix: LayerPath,
        owners: dict[LayerPath, LayerPath],
        made: dict[LayerPath, Any],
    ) -> Any:
        net = keras.Sequential()  # created before its children, so names read outer to inner
        for index, layer in enumerate(layers):
            path = prefix + (index,)
            if isinstance(layer, Block):
                net.add(self._sequential(layer.layers, path, owners, made))
            elif isinstance(layer, Dense):
                owner = owners[path]
                if owner == path:
                    made[path] = keras.layers.Dense(layer.units)
                net.add(made[owner])  # a tie is the very same layer object
            else:
                net.add(keras.layers.ReLU())
        return net

    def unbuilt_params(self, model: Model) -> dict[str, str]:
        # Keras creates no variable before build: an unbuilt Sequential's weights list is empty.
        return {v.path: str(tuple(v.shape)) for v in model.native.weights}

    def materialize(self, model: Model) -> None:
        if not all(layer.built for layer in model.state["layers"].values()):
            model.native(np.zeros((1, model.spec.in_features), np.float32))

    def forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)
        return _to_numpy(model.native(np.asarray(x, dtype=np.float32)))

    # -- access by position ----------------------------------------------------------------------
    def _variable(self, model: Model, position: str) -> Any:
        model.spec.owner_of(position)  # KeyError naming ``position`` unless it is a Dense position
        path, role = split_param_name(position)
        layer = model.state["layers"][path]
        if not isinstance(layer, keras.layers.Dense):
            raise KeyError(f"{position!r}: the layer at {path} is {_qualname(layer)}, not Dense")
        return getattr(layer, _ATTR[role])

    def read_native(self, model: Model, position: str) -> np.ndarray:
        return _to_numpy(self._variable(model, position))

    def write_native(self, model: Model, position: str, value: np.ndarray) -> None:
        variable = self._variable(model, position)
        value = np.asarray(value, dtype=np.float32)
        if tuple(variable.shape) != value.shape:
            expected = tuple(variable.shape)
            raise ValueError(f"{position}: shape={value.shape}, but should be {expected}")
        variable.assign(value)

    def read_by_native_name(self, model: Model, native_name: str) -> np.ndarray:
        by_path = {v.path: v for v in model.native.weights}
        if native_name not in by_path:
            raise KeyError(f"{native_name!r} is not the path of any variable in net.weights")
        return _to_numpy(by_path[native_name])

    def native_type(self, model: Model, position: str) -> str:
        return _qualname(self._variable(model, position))

    def _unique(self, model: Model) -> list[tuple[str, Any, list[str]]]:
        """(canonical owner name, variable, positions) per distinct Variable object, walk order."""
        seen: dict[int, tuple[str, Any, list[str]]] = {}
        for slot in model.spec.dense_slots:
            for role in ROLES:
                position = param_name(slot.path, role)
                variable = self._variable(model, position)
                seen.setdefault(id(variable), (position, variable, []))[2].append(position)
        return list(seen.values())

    def list_params(self, model: Model) -> tuple[ParamInfo, ...]:
        self.materialize(model)
        infos = []
        for name, v, positions in self._unique(model):
            native_shape = tuple(v.shape)
            shape = self.to_canonical(split_param_name(name)[1], np.empty(native_shape)).shape
            infos.append(
                ParamInfo(
                    name=name,
                    native_name=v.path,
                    native_shape=native_shape,
                    shape=shape,
                    dtype=str(v.dtype),
                    native_class=_qualname(v),
                    positions=tuple(positions),
                )
            )
        return tuple(infos)

    # -- gradients -------------------------------------------------------------------------------
    def grad_state_before_backward(self, model: Model) -> str:
        # Read off a fresh model of the same spec: earlier backward calls on ``model`` don't count.
        fresh = self.build_mlp(model.spec)
        self.materialize(fresh)
        grads = [getattr(v, "grad", _NO_GRAD) for v in fresh.native.weights]
        if all(g is _NO_GRAD for g in grads):
            return GradState.NOT_STORED  # gradients live only in a GradientTape's result
        if all(g is None for g in grads):
            return GradState.NONE
        if all(g is not None and g is not _NO_GRAD and not np.any(_to_numpy(g)) for g in grads):
            return GradState.ZEROS
        raise RuntimeError(f"unexpected .grad before backward: {[type(g).__name__ for g in grads]}")

    def _loss_and_grads(
        self, model: Model, x: np.ndarray, loss: Loss
    ) -> tuple[tf.Tensor, list[tuple[str, Any]], list[tf.Tensor]]:
        unique = [(name, v) for name, v, _ in self._unique(model)]
        with tf.GradientTape() as tape:  # a fresh tape per call: nothing accumulates
            y = model.native(tf.constant(x, dtype=tf.float32))
            if loss.kind == "sum":
                value = tf.reduce_sum(y)
            else:
                value = tf.reduce_mean(tf.square(y - tf.constant(loss.target, dtype=tf.float32)))
        # One Variable used at two positions gets one gradient: the tape sums both uses.
        return value, unique, tape.gradient(value, [v for _, v in unique])

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        _, unique, grads = self._loss_and_grads(model, x, loss)
        return {name: _to_numpy(g) for (name, _), g in zip(unique, grads, strict=True)}

    def native_sgd_step(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        optimizer = model.state.get("sgd")
        if optimizer is None:
            optimizer = model.state["sgd"] = keras.optimizers.SGD(learning_rate=lr)
        optimizer.learning_rate = lr  # assigns the optimizer's learning-rate variable
        value, unique, grads = self._loss_and_grads(model, x, loss)
        # Each unique Variable is passed once, so a tied one is updated once with the summed grad.
        optimizer.apply_gradients(zip(grads, [v for _, v in unique], strict=True))
        return float(value.numpy()), {name: _to_numpy(g) for (name, _), g in zip(unique, grads, strict=True)}

    # -- facts and files -------------------------------------------------------------------------
    def native_facts(self, model: Model) -> dict[str, Any]:
        self.materialize(model)
        net = model.native
        tie_identity: dict[str, bool] = {}
        if model.spec.ties:
            layers = [model.state["layers"][path] for path in model.spec.ties[0]]
            variables = [[getattr(layer, _ATTR[role]) for layer in layers] for role in ROLES]
            tie_identity = {
                "same layer object": all(layer is layers[0] for layer in layers),
                "same parameter object": all(v is group[0] for group in variables for v in group),
            }
        return {
            "listing_call": "net.weights",
            "listing_names": [v.path for v in net.weights],
            "layer_list_call": "net.layers",
            # Keras 3 keeps a layer added twice twice here (the book says the duplicate is removed).
            "layer_list_length": len(net.layers),
            "unique_layer_objects": len({id(layer) for layer in net.layers}),
            "serializations": {
                "net.weights": [v.path for v in net.weights],
                "net.trainable_variables": [v.path for v in net.trainable_variables],
                "net.get_weights()": [str(i) for i in range(len(net.get_weights()))],
            },
            "tie_identity": tie_identity,
        }

    def save_native_file(self, model: Model, path: str) -> str:
        self.materialize(model)
        with warnings.catch_warnings():
            # Keras 3.15's h5 writer calls np.asarray(variable, copy=False): a numpy 2 warning.
            warnings.simplefilter("ignore", DeprecationWarning)
            model.native.save_weights(path + ".weights.h5")
        return "net.save_weights(path + '.weights.h5')"

    def _file_entries(self, model: Model) -> dict[str, str]:
        """Dataset path in a .weights.h5 file -> canonical owner name, following Keras' saving_lib:
        a layer's group is named after its class (``dense``, ``dense_1``, ... counted per list,
        duplicates included), and a layer already written is skipped, so a tie is stored once.
        Dense writes kernel then bias as vars/0, vars/1. By layer object, so no build is needed."""
        owner: dict[int, LayerPath] = {}
        for path, layer in model.state["layers"].items():  # walk order: first use owns
            owner.setdefault(id(layer), path)
        entries: dict[str, str] = {}
        visited: set[int] = set()

        def walk(net: Any, prefix: str) -> None:
            counts: dict[str, int] = {}
            for layer in net.layers:
                base = _snake_case(type(layer).__name__)
                counts[base] = counts.get(base, -1) + 1
                group = prefix + (f"{base}_{counts[base]}" if counts[base] else base)
                if id(layer) in visited:
                    continue
                visited.add(id(layer))
                if isinstance(layer, keras.Sequential):
                    walk(layer, group + "/layers/")
                elif isinstance(layer, keras.layers.Dense):
                    for index, role in enumerate(ROLES):
                        entries[f"{group}/vars/{index}"] = param_name(owner[id(layer)], role)

        walk(model.native, "layers/")
        return entries

    def load_native_file(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        # h5py reads plain HDF5 datasets; nothing in the file is executed.
        file_name = path + ".weights.h5"
        expected = self._file_entries(model)
        names: list[str] = []
        values: dict[str, np.ndarray] = {}
        with h5py.File(file_name, "r") as store:
            store.visititems(lambda key, obj: names.append(key) if isinstance(obj, h5py.Dataset) else None)
            for key in names:
                if key not in expected:
                    raise ParamFileError(
                        f"{file_name}: entry {key!r} is not a parameter of "
                        f"{model.spec.name!r}; expected: {', '.join(expected)}"
                    )
                name, value = expected[key], np.array(store[key], dtype=np.float32)
                if name in values and not np.array_equal(values[name], value):
                    raise ParamFileError(f"{file_name}: {key!r} differs from another copy of {name}")
                values[name] = value
        return names, values
