"""Keras, written once for every Keras backend (Keras 3 on TensorFlow, JAX or PyTorch; tf-keras 2).

Design requirements:
- one adapter class per Keras flavour; each passes in its own keras module (and ``tf`` where the
  variables are TensorFlow's), as einops' backends do, so this module imports no framework and each
  backend's package imports only the roots its declaration names;
- a net is a ``Sequential`` of ``Dense`` / ``ReLU`` / ``BatchNormalization``; a tie is the same
  layer object added twice; a nested block is a nested ``Sequential``; shapes come from build-on-call;
- an Embedding is the flavour's own embedding layer (Keras 3: ``ReversibleEmbedding``); a Dense
  tied to its table is a ``TiedProjection``, a small layer that holds the embedding layer and reads
  its table transposed at every call (Keras 3: ``embedding(x, reverse=True)``), plus a bias of its
  own: one variable, never copied;
- a BatchNormalization keeps ``moving_mean`` / ``moving_variance`` as non-trainable variables,
  which a call with ``training=True`` updates (Keras' momentum is the weight of the OLD value:
  1 - the canonical one); freezing is ``layer.trainable = False``, which takes a layer's variables
  out of ``net.trainable_variables`` (and runs a BatchNormalization in inference mode), so the
  gradients and the SGD steps cover ``net.trainable_variables`` only;
- default names come from a global counter and initial values from Python's ``random``: both are
  reset for every build, so a spec always gets the same names and values;
- the native file is Keras' own ``.weights.h5``, read back with h5py (no model is built from it).

A backend's adapter adds the framework's primitives: its gradient and training fast path, and
whatever its Keras does differently (tf-keras names variables ``dense/kernel:0``...).
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.core.interface import NOT_STORED, Backend, Model, qualname
from common.core.oracle import Loss
from common.core.spec import ROLES, Dense, LayerPath, ModelSpec, ReLU, param_name, split_param_name
from common.core.untrusted import printable
from common.errors import ParamFileError

__all__ = [
    "KerasBackendBase",
    "TensorFlowKerasBase",
    "bench_net",
    "bench_running_stats",
    "reverse_call",
    "tf_make_handwritten",
    "tied_projection_class",
]

_INIT_SEED = 0
_ATTR = {"weight": "kernel", "bias": "bias"}  # canonical role -> Dense attribute
# canonical role -> BatchNormalization attribute: its parameters, then its non-trainable state
_NORM_ATTR = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def _snake_case(name: str) -> str:
    # The rule Keras' saving_lib uses for a layer's group name in a .weights.h5 file.
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def reverse_call(embedding: Any, x: Any) -> Any:
    """Keras 3's idiom for the tied output projection: ReversibleEmbedding's reverse call,
    ``x @ transpose(embeddings)``."""
    return embedding(x, reverse=True)


@functools.cache
def tied_projection_class(keras: Any, project: Callable[[Any, Any], Any]) -> type:
    """The layer class (one per Keras module and reading function) of a Dense tied to an embedding's table:
    ``project(embedding, x) + bias``, ``project`` reading the table transposed at every call. The
    embedding layer is an attribute, so Keras tracks it as a sublayer: its table is listed and saved
    once (where the embedding itself is), and freezing the projection freezes the embedding too."""

    class TiedProjection(keras.layers.Layer):
        def __init__(self, embedding: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.embedding = embedding

        def build(self, input_shape: Any) -> None:
            # Dense's default bias initializer; its only own variable, so .weights.h5 saves it as vars/0.
            self.bias = self.add_weight(shape=(self.embedding.input_dim,), initializer="zeros", name="bias")

        def call(self, x: Any) -> Any:
            return project(self.embedding, x) + self.bias

    TiedProjection.__qualname__ = "TiedProjection"  # as reports name it, not "<locals>"
    return TiedProjection


def zero_input(spec: ModelSpec) -> np.ndarray:
    """One sample of the spec's input kind, for the build-on-call: an id, or a row of features."""
    if spec.input_kind == "ids":
        return np.zeros((1,), np.int64)
    return np.zeros((1, spec.in_features), np.float32)


@dataclass
class KerasState:
    sgd_lr: float | None = None  # the rate last assigned to the model's SGD


def batchnorm_settings(momentum: float | None, eps: float | None) -> dict[str, float]:
    """BatchNormalization's keyword arguments for a canonical momentum (the weight of the new
    batch) and epsilon; an unset one is left to Keras' default. Keras' momentum is the weight of
    the old value: moving = moving * momentum + batch * (1 - momentum)."""
    settings = {"momentum": None if momentum is None else 1.0 - momentum, "epsilon": eps}
    return {key: value for key, value in settings.items() if value is not None}


class KerasBackendBase(Backend):
    """Everything a Keras backend shares: building, access by position, facts and files."""

    lazy_mechanism = "Dense(units) builds its kernel on the first call (build-on-call)"
    tie_mechanism = "the same Dense layer object at both positions"
    native_file_suffix = ".weights.h5"
    # saving_lib names a container's layers dense, dense_1...; Keras 3 counts a layer already saved
    # (a tie seen in another Sequential), tf-keras skips it before counting.
    saved_layers_take_a_name = True

    # How a TiedProjection reads its embedding's table, transposed (a module-level function: one
    # layer class per Keras module and function).
    project_transposed = staticmethod(reverse_call)

    def __init__(self, keras: Any, runtime: Any) -> None:
        self.keras = keras  # the Keras module: keras (3), or tf_keras (2)
        self.runtime = runtime  # the framework it runs on: tensorflow, jax or torch
        self._init_seed = _INIT_SEED
        self.tied_projection = tied_projection_class(keras, type(self).project_transposed)

    def new_adapter_state(self) -> KerasState:
        return KerasState()

    def framework_version(self) -> str:
        return f"{self.runtime.__version__} (keras {self.keras.__version__})"

    def seed(self, seed: int) -> None:
        self._init_seed = seed  # used by the next build_mlp

    # -- the primitives a Keras flavour may do differently ---------------------------------------
    def reset_names(self) -> None:
        """Restart the global name counter, so names depend on build order only."""
        self.keras.backend.clear_session(free_memory=False)  # free_memory: a gc.collect() per build

    def native_name(self, variable: Any) -> str:
        return variable.path  # Keras 3: "sequential/dense/kernel"

    def to_numpy(self, value: Any) -> np.ndarray:
        if isinstance(value, self.keras.Variable):  # its backend tensor: numpy 2 warns on the variable
            value = value.value
        # A copy: the buffer may be shared with a variable updated later.
        return np.array(self.keras.ops.convert_to_numpy(value), dtype=np.float32, copy=True)

    def loss_value(self, y: Any, kind: str, target: Any) -> Any:
        ops = self.keras.ops
        return ops.sum(y) if kind == "sum" else ops.mean(ops.square(y - target))

    # -- building --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _seeded(self) -> Iterator[None]:
        # An unseeded initializer draws its seed from Python's `random` (Keras 3 when the layer is
        # made, tf-keras when it is built); seed it locally, leaving the global state as it was.
        saved = random.getstate()
        random.seed(self._init_seed)
        try:
            yield
        finally:
            random.setstate(saved)

    def build_mlp(self, spec: ModelSpec) -> Model:
        self.reset_names()
        with self._seeded():
            return super().build_mlp(spec)

    def new_dense(self, units: int, in_features: int) -> Any:
        return self.keras.layers.Dense(units)

    def new_relu(self) -> Any:
        return self.keras.layers.ReLU()

    def new_embedding(self, vocab: int, dim: int) -> Any:
        return self.keras.layers.ReversibleEmbedding(vocab, dim)  # tie_weights=True: reverse reads the table

    def tied_output(self, embedding: Any, units: int) -> Any:
        return self.tied_projection(embedding)  # units == the embedding's vocab (the spec checks it)

    def new_sequential(self, spec: ModelSpec, path: LayerPath) -> Any:
        return self.keras.Sequential()  # created before its children, so names read outer to inner

    def finish_sequential(self, container: Any, children: list[Any]) -> Any:
        for layer in children:
            container.add(layer)
        return container

    def child(self, container: Any, index: int) -> Any:
        return container.layers[index]

    def unbuilt_params(self, model: Model) -> dict[str, str]:
        # Keras creates no variable before build: an unbuilt Sequential's weights list is empty.
        return {self.native_name(v): str(tuple(v.shape)) for v in model.native.weights}

    def materialize(self, model: Model) -> None:
        if not all(layer.built for layer in self.position_table(model).values()):
            with self._seeded():
                model.native(zero_input(model.spec))

    # ``x`` is checked already: float32 features, or int64 ids for a model with an Embedding.
    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)  # inference: a BatchNormalization uses its moving statistics
        return self.to_numpy(model.native(x, training=False))

    def native_forward_training(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)  # batch statistics; each BatchNormalization assigns its moving ones
        return self.to_numpy(model.native(x, training=True))

    # -- BatchNorm and freezing ----------------------------------------------------------------------
    def new_batchnorm(self, features: int, momentum: float | None, eps: float | None) -> Any:
        return self.keras.layers.BatchNormalization(**batchnorm_settings(momentum, eps))

    def freeze(self, model: Model, path: LayerPath) -> None:
        # Keras' own idiom, before or after build: the layer's variables leave
        # net.trainable_variables, and a frozen BatchNormalization runs in inference mode.
        self.position_table(model)[path].trainable = False

    def state_object(self, model: Model, position: str) -> Any:
        layer, role = self.batchnorm_layer(model, position, self.keras.layers.BatchNormalization)
        return getattr(layer, _NORM_ATTR[role])

    def describe_state(self, model: Model, state: Any) -> tuple[str, tuple[int, ...], str]:
        return self.describe_param(model, state)

    def native_state_value(self, model: Model, position: str) -> np.ndarray:
        return self.to_numpy(self.state_object(model, position))

    def write_native_state_value(self, model: Model, position: str, value: np.ndarray) -> None:
        variable = self.state_object(model, position)
        value = np.asarray(value, dtype=np.float32)
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{position}: shape={value.shape}, but should be {tuple(variable.shape)}")
        variable.assign(value)

    def state_listing(self, model: Model) -> tuple[str, list[str]]:
        # Keras lists the moving statistics with the frozen parameters: every variable outside
        # net.trainable_weights (which tf-keras refuses to list before the net is built).
        self.ensure_built(model)
        return "net.non_trainable_weights", [self.native_name(v) for v in model.native.non_trainable_weights]

    # -- access by position ----------------------------------------------------------------------
    def param_object(self, model: Model, position: str) -> Any:
        model.spec.owner_of(position)  # KeyError naming ``position`` unless it holds parameters
        path, role = split_param_name(position)
        layer = self.position_table(model)[path]
        if isinstance(layer, self.keras.layers.BatchNormalization):
            return getattr(layer, _NORM_ATTR[role])
        if isinstance(layer, self.keras.layers.Embedding):
            return layer.embeddings  # its only role (owner_of refused any other)
        if isinstance(layer, self.tied_projection):  # the weight is the embedding's very table
            return layer.embedding.embeddings if role == "weight" else layer.bias
        if not isinstance(layer, self.keras.layers.Dense):
            raise KeyError(f"{position!r}: the layer at {path} is {qualname(layer)}, not Dense")
        return getattr(layer, _ATTR[role])

    def describe_param(self, model: Model, param: Any) -> tuple[str, tuple[int, ...], str]:
        dtype = param.dtype
        return self.native_name(param), tuple(param.shape), str(getattr(dtype, "name", dtype))

    def native_value(self, model: Model, position: str) -> np.ndarray:
        return self.to_numpy(self.param_object(model, position))

    def write_native_value(self, model: Model, position: str, value: np.ndarray) -> None:
        variable = self.param_object(model, position)
        value = np.asarray(value, dtype=np.float32)
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{position}: shape={value.shape}, but should be {tuple(variable.shape)}")
        variable.assign(value)

    def native_value_by_name(self, model: Model, native_name: str) -> np.ndarray:
        by_name = {self.native_name(v): v for v in model.native.weights}
        if native_name not in by_name:
            raise KeyError(f"{native_name!r} is not the name of any variable in net.weights")
        return self.to_numpy(by_name[native_name])

    def stored_grad(self, model: Model, param: Any) -> Any:
        return NOT_STORED  # a Keras variable keeps no gradient; a GradientTape's result does

    def unique_variables(self, model: Model) -> list[tuple[str, Any]]:
        """(canonical owner name, variable) per distinct variable in ``net.trainable_variables``:
        a tie appears once, a frozen layer's variables not at all. Read once per model, as the
        compiled steps that close over it are (freezing happens when the model is built)."""

        def read() -> list[tuple[str, Any]]:
            trainable = {id(v) for v in model.native.trainable_variables}
            return [(name, v) for name, v, _ in self.observed_params(model) if id(v) in trainable]

        return self.compiled(model, "trainable variables", read)

    @staticmethod
    def split_watched(flat: np.ndarray, unique: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
        """Watched gradients kept as one flat row per step (the unique variables' gradients,
        raveled and concatenated in ``unique``'s order; one array per step crosses cheaply)
        -> canonical owner name -> (steps, *native shape)."""
        watched, start = {}, 0
        for name, variable in unique:
            shape = tuple(variable.shape)
            size = int(np.prod(shape))
            watched[name] = flat[:, start : start + size].reshape(len(flat), *shape)
            start += size
        return watched

    def sgd(self, model: Model, lr: float, variables: list[Any]) -> Any:
        """The model's one Keras SGD, built once for ``variables`` (so no variable is made while a
        step is traced); ``lr`` is assigned to its learning-rate variable, which a compiled step
        reads, so a new rate retraces nothing."""

        def make() -> Any:
            optimizer = self.keras.optimizers.SGD(learning_rate=lr)
            optimizer.build(variables)
            return optimizer

        optimizer = self.compiled(model, "sgd", make)
        state: KerasState = model.adapter_state
        if state.sgd_lr != lr:  # an assignment costs a device write on every call
            optimizer.learning_rate = state.sgd_lr = lr
        return optimizer

    # -- facts -----------------------------------------------------------------------------------
    def listing(self, model: Model) -> tuple[str, list[str]]:
        return "net.weights", [self.native_name(v) for v in model.native.weights]

    def layer_list(self, model: Model) -> tuple[str, list[Any]]:
        return "net.layers", list(model.native.layers)

    def serializations(self, model: Model) -> dict[str, list[str]]:
        net = model.native
        with warnings.catch_warnings():
            # Keras 3.15 calls np.array(variable), which numpy 2 warns about (no copy keyword).
            warnings.simplefilter("ignore", DeprecationWarning)
            weights = net.get_weights()
        return {
            "net.weights": [self.native_name(v) for v in net.weights],
            "net.trainable_variables": [self.native_name(v) for v in net.trainable_variables],
            "net.get_weights()": [str(i) for i in range(len(weights))],
        }

    # -- files -----------------------------------------------------------------------------------
    def write_native_file(self, model: Model, file: str) -> str:
        self.materialize(model)
        with warnings.catch_warnings():
            # Keras 3.15's h5 writer calls np.asarray(variable, copy=False): a numpy 2 warning.
            warnings.simplefilter("ignore", DeprecationWarning)
            model.native.save_weights(file)
        return f"net.save_weights(path + '{self.native_file_suffix}')"

    def saved_roles(self, layer: Any) -> tuple[str, ...]:
        """The canonical roles of the variables a layer writes itself, as vars/0, vars/1...: its own
        variables only, not a sublayer's. A TiedProjection's own variable is its bias: the table is
        its embedding's, written where that layer is first met."""
        if isinstance(layer, self.keras.layers.Dense | self.keras.layers.BatchNormalization):
            return ROLES
        if isinstance(layer, self.keras.layers.Embedding):
            return ("weight",)
        if isinstance(layer, self.tied_projection):
            return ("bias",)
        return ()

    def native_file_keys(self, model: Model) -> dict[str, str]:
        """Dataset path in a .weights.h5 file -> canonical owner, following Keras' saving_lib: a
        layer's group is named after its class (``dense``, ``dense_1``, ... counted over
        ``net.layers``, see saved_layers_take_a_name), a layer already written is skipped, so a
        tie is stored once, and each layer writes its own variables (``saved_roles``): Dense its
        kernel then bias as vars/0, vars/1. By layer object, so no build is needed.
        A BatchNormalization writes gamma, beta as vars/0, vars/1, then its moving statistics as
        vars/2, vars/3: those are state, which this map of parameters leaves out."""
        owner: dict[int, LayerPath] = {}
        for path, layer in self.position_table(model).items():  # walk order: the first use owns
            owner.setdefault(id(layer), path)
        entries: dict[str, str] = {}
        visited: set[int] = set()

        def walk(net: Any, prefix: str) -> None:
            counts: dict[str, int] = {}
            for layer in net.layers:
                if id(layer) in visited and not self.saved_layers_take_a_name:
                    continue
                base = _snake_case(type(layer).__name__)
                counts[base] = counts.get(base, -1) + 1
                group = prefix + (f"{base}_{counts[base]}" if counts[base] else base)
                if id(layer) in visited:
                    continue
                visited.add(id(layer))
                if isinstance(layer, self.keras.Sequential):
                    walk(layer, group + "/layers/")
                    continue
                for index, role in enumerate(self.saved_roles(layer)):
                    entries[f"{group}/vars/{index}"] = param_name(owner[id(layer)], role)

        walk(model.native, "layers/")
        return entries

    def read_native_file_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        """The .weights.h5 datasets, each checked before a byte of it is read: a hard link to a
        plain float32 dataset of the shape the spec gives that entry. External storage, virtual
        datasets and soft or external links would read other files, so they are refused."""
        import h5py  # Keras' own dependency; reads plain HDF5 datasets, runs nothing from the file

        expected = self.native_file_keys(model)
        shapes = {key: self._native_shape(model, owner) for key, owner in expected.items()}
        entries: list[tuple[str, np.ndarray]] = []
        with h5py.File(file, "r") as store:
            pending: list[tuple[str, Any]] = [("", store)]
            while pending:
                prefix, group = pending.pop(0)
                for name in group:
                    path = prefix + name
                    link = group.get(name, getlink=True)
                    if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
                        raise ParamFileError(f"entry {printable(path)} is a {type(link).__name__}: refused")
                    node = group[name]
                    if isinstance(node, h5py.Group):
                        pending.append((path + "/", node))
                    elif isinstance(node, h5py.Dataset):
                        entries.append((path, self._checked_dataset(path, node, shapes)))
                    if len(entries) + len(pending) > 4 * len(expected) + 64:
                        raise ParamFileError(f"holds far more entries than {len(expected)} parameters")
        return entries

    def _native_shape(self, model: Model, owner: str) -> tuple[int, ...]:
        shape = model.spec.param_shapes[owner]
        return shape[::-1] if self.transposes(model.spec, owner) else shape

    @staticmethod
    def _checked_dataset(path: str, dataset: Any, shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
        where = f"entry {printable(path)}"
        if dataset.is_virtual:
            raise ParamFileError(f"{where} is a virtual dataset (it reads other files): refused")
        if dataset.external:
            raise ParamFileError(f"{where} keeps its data in external files: refused")
        if path in shapes and tuple(dataset.shape) != shapes[path]:
            raise ParamFileError(f"{where}: shape={tuple(dataset.shape)}, but should be {shapes[path]}")
        if dataset.dtype != np.float32:
            raise ParamFileError(f"{where}: dtype={dataset.dtype}, but should be float32")
        if path not in shapes:  # unknown names are refused by the caller; read nothing of them
            return np.zeros(0, np.float32)
        return np.array(dataset, dtype=np.float32)


class TensorFlowKerasBase(KerasBackendBase):
    """A Keras whose variables are TensorFlow variables (Keras 3 on TF, tf-keras): gradients from a
    GradientTape; training on one ``tf.function`` step per model and loss kind, with the learning
    rate held in the optimizer's variable, so changing it retraces nothing. The net runs with
    ``training=True`` there: each BatchNormalization assigns its moving statistics inside the
    step, as Keras' own train_step does."""

    def __init__(self, keras: Any, tf: Any) -> None:
        super().__init__(keras, tf)
        self.tf = tf

    def to_numpy(self, value: Any) -> np.ndarray:
        # Not keras.ops.convert_to_numpy: on a variable, Keras 3.15 calls np.array(x), which numpy 2
        # warns about; tf-keras has no keras.ops at all.
        return np.array(self.tf.convert_to_tensor(value).numpy(), dtype=np.float32, copy=True)

    def loss_value(self, y: Any, kind: str, target: Any) -> Any:
        tf = self.tf
        return tf.reduce_sum(y) if kind == "sum" else tf.reduce_mean(tf.square(y - target))

    def _target(self, loss: Loss) -> Any:
        return self.tf.constant(0.0 if loss.target is None else loss.target, dtype=self.tf.float32)

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        unique = self.unique_variables(model)
        with self.tf.GradientTape() as tape:  # a fresh tape per call: nothing accumulates
            y = model.native(self.tf.constant(x), training=True)  # moving statistics assigned
            value = self.loss_value(y, loss.kind, self._target(loss))
        # One variable used at two positions gets one gradient: the tape sums both uses.
        grads = tape.gradient(value, [v for _, v in unique])
        return {name: self.to_numpy(g) for (name, _), g in zip(unique, grads, strict=True)}

    def _train_step(self, model: Model, optimizer: Any, kind: str, watch: bool) -> Any:
        tf, net = self.tf, model.native
        variables = [v for _, v in self.unique_variables(model)]

        @tf.function
        def step(x: Any, target: Any) -> Any:
            self.note_trace(model)
            with tf.GradientTape() as tape:
                value = self.loss_value(net(x, training=True), kind, target)
            grads = tape.gradient(value, variables)
            # Each unique variable is passed once: a tied one is updated once, with the summed grad.
            # The explicit ordering is needed: with a Dense used twice in a row, TF 2.21's Grappler
            # (its dependency optimizer) lets the update race the forward reads, so about half of
            # the first steps returned a wrong loss and applied a wrong update (Keras 3 and tf-keras
            # alike; eager and gradient-only functions are right; off with dependency_optimization).
            with tf.control_dependencies([value, *grads]):
                optimizer.apply_gradients(zip(grads, variables, strict=True))
            return value, (tf.concat([tf.reshape(g, [-1]) for g in grads], 0) if watch else ())

        return step

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        tf, unique = self.tf, self.unique_variables(model)
        optimizer = self.sgd(model, lr, [v for _, v in unique])
        step = self.compiled(
            model, ("step", loss.kind, watch), lambda: self._train_step(model, optimizer, loss.kind, watch)
        )
        inputs, target = tf.constant(x), self._target(loss)
        losses, grads = [], []
        for _ in range(steps):
            value, applied = step(inputs, target)
            losses.append(value)
            if watch:
                grads.append(applied)
        watched = self.split_watched(tf.stack(grads).numpy(), unique) if watch else {}
        return tf.stack(losses).numpy().astype(np.float64), watched


# == hand-written loops and nets for the benches (not the adapters) ==================================
def bench_net(
    keras: Any, spec: ModelSpec, weights: dict[str, np.ndarray], input_layer: bool = False
) -> tuple[Any, dict[LayerPath, Any]]:
    """The spec's flat net (Dense, ReLU, BatchNorm) as a practitioner writes it: a tie is one layer
    added twice, a frozen layer has ``trainable = False``; loaded with ``weights`` (canonical
    (out, in)), moving statistics at Keras' initial values. Returns the net and its layers by
    owner position."""
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    made: dict[LayerPath, Any] = {}
    layers = []
    for path, layer in spec.walk():
        if isinstance(layer, ReLU):
            layers.append(keras.layers.ReLU())
            continue
        owner = owners[path]  # a Block raises KeyError here: the benches take flat specs
        if owner not in made:
            made[owner] = (
                keras.layers.Dense(layer.units)
                if isinstance(layer, Dense)
                else keras.layers.BatchNormalization(**batchnorm_settings(layer.momentum, layer.eps))
            )
        layers.append(made[owner])
    net = keras.Sequential(([keras.Input(shape=(spec.in_features,))] if input_layer else []) + layers)
    net(np.zeros((1, spec.in_features), np.float32))
    for owner, layer in made.items():
        weight, bias = weights[param_name(owner, "weight")], weights[param_name(owner, "bias")]
        if isinstance(layer, keras.layers.Dense):
            layer.kernel.assign(weight.T)
            layer.bias.assign(bias)
        else:
            layer.gamma.assign(weight)
            layer.beta.assign(bias)
        layer.trainable = spec.trainable_at(owner)
    return net, made


def bench_running_stats(
    spec: ModelSpec, made: dict[LayerPath, Any], read: Callable[[Any], Any]
) -> Callable[[], dict[str, np.ndarray]]:
    """The bench loop's running statistics by canonical name: ``read(variable)`` gives the value
    a BatchNormalization's moving_mean or moving_variance holds now."""
    return lambda: {
        p.name: np.array(read(getattr(made[p.owner], _NORM_ATTR[p.role])), dtype=np.float32)
        for p in spec.state
    }


def tf_make_handwritten(
    keras: Any,
    tf: Any,
    spec: ModelSpec,
    weights: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
    input_layer: bool = False,
) -> Any:
    """The hand-written Keras-on-TensorFlow loop for ``spec``, set up once: one tf.function step
    (GradientTape, Keras SGD, the net called with training=True); a HandwrittenLoop."""
    from common.commands.bench import HandwrittenLoop  # bench code only: adapters never load it

    net, made = bench_net(keras, spec, weights, input_layer=input_layer)
    optimizer = keras.optimizers.SGD(learning_rate=lr)
    variables = net.trainable_variables

    @tf.function
    def step(inputs: Any, targets: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(inputs, training=True) - targets))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    inputs, targets = tf.constant(x), tf.constant(y)

    def run(steps: int) -> np.ndarray:
        return tf.stack([step(inputs, targets) for _ in range(steps)]).numpy()

    return HandwrittenLoop(run, bench_running_stats(spec, made, lambda variable: variable.numpy()))
