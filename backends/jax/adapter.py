"""JAX/Flax linen adapter: ``nn.Sequential`` of ``nn.Embed``, ``nn.Dense``, ``nn.BatchNorm`` and
``nn.relu``; a tie is one ``nn.Dense`` (or ``nn.BatchNorm``) instance placed at two positions, and
an output tied to the embedding is a ``TiedOutput`` holding the very ``nn.Embed``, through
``Embed.attend``.

Flax quirks this adapter is built around:
- a linen module holds no arrays; ``net.init(key, x)`` returns the variables as a nested dict, so
  they live in the model's ``LinenState.variables`` and every write replaces a leaf there;
- a submodule is named where its parent adopts it (``layers_<index>``). A shared instance is
  adopted once, by its first position, so ``layers_4`` never appears: position 4 reads
  ``params/layers_2``. Positions are mapped to parameter paths through the adopted (bound) module
  objects, so a tie is observed, never taken from ``spec.ties``: both positions resolve to the
  very same leaf of the variables dict. The ``nn.Embed`` a ``TiedOutput`` holds is adopted by its
  first position too, so its table is ``params/layers_0/embedding`` at both uses;
- a BatchNorm's running statistics are the ``batch_stats`` collection beside ``params``; its mode
  is the module attribute ``use_running_average``, which ``nn.Sequential`` cannot pass down at
  call time. So the net is built in inference mode (``use_running_average=True``: ``apply``
  leaves ``batch_stats`` as it is) and training applies its twin, the same layers with every
  BatchNorm cloned once with ``use_running_average=False``, marking ``batch_stats`` mutable;
  both name every submodule alike, so they share one variables dict;
- linen has no trainable flag: a frozen layer's parameters get an ``optax.set_to_zero()`` in an
  ``optax.partition`` of SGD (Flax's transfer-learning idiom) and are left out of the gradients
  the adapter reports; the layer's mode is unchanged, so a frozen BatchNorm still trains its
  statistics.
Fast path: one ``jax.jit`` step (value_and_grad, then optax.sgd) per model, see backends._flax_common.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util

from backends._flax_common import (
    FlaxBase,
    FlaxLayers,
    FlaxState,
    batchnorm_settings,
    named_leaves,
    slash_path,
)
from backends._jax_common import (
    CompiledPerSpec,
    Step,
    Tree,
    checked_value,
    compiles_build,
    model_input,
    objective,
    to_numpy,
)
from common.core.interface import Model
from common.core.spec import LayerPath

__all__ = ["FlaxBackend", "MyDense", "TiedOutput"]


class TiedOutput(nn.Module):
    """A Dense whose kernel is ``embedding``'s table, through Flax's ``Embed.attend`` (as its lm1b
    and wmt examples tie their logits): ``x @ table.T`` plus a bias of its own, zeros at init as
    ``nn.Dense``'s. The Embed is the very instance the net looks ids up with."""

    embedding: nn.Embed
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return self.embedding.attend(x) + bias


class MyDense(nn.Module):
    """D2L 6.5's custom layer: ``weight`` and ``bias`` created with ``self.param`` in ``setup``,
    the book's names and initializers. Unlike the book's, no ReLU inside (the spec's ReLU is a
    layer of its own); its kernel is (in_units, units), as the book's and nn.Dense's."""

    in_units: int
    units: int

    def setup(self) -> None:
        self.weight = self.param("weight", nn.initializers.normal(stddev=1), (self.in_units, self.units))
        self.bias = self.param("bias", nn.initializers.zeros, (self.units,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.matmul(x, self.weight) + self.bias


LAYERS = FlaxLayers(dense=nn.Dense, norm=nn.BatchNorm, embed=nn.Embed, tied=TiedOutput, custom=MyDense)


def _replace(tree: Tree, keys: tuple[str, ...], leaf: Any) -> Tree:
    # Variables are plain nested dicts of immutable jax arrays: rebuild the branch to the leaf,
    # keeping every other leaf (and the key order) as it was.
    if not keys:
        return leaf
    return {**tree, keys[0]: _replace(tree[keys[0]], keys[1:], leaf)}


def _split(variables: Tree) -> tuple[Tree, Tree]:
    """(params, every other collection: batch_stats where the net has a BatchNorm)."""
    return variables["params"], {name: tree for name, tree in variables.items() if name != "params"}


def _ordered_like(template: Tree, tree: Tree) -> Tree:
    # jax rebuilds dicts with sorted keys (bias before kernel); keep init's order so the listing
    # and the file do not change order after a step.
    flat = traverse_util.flatten_dict(tree)
    return traverse_util.unflatten_dict({keys: flat[keys] for keys in traverse_util.flatten_dict(template)})


def _in_mode(layer: Any, use_running_average: bool, twins: dict[int, nn.BatchNorm]) -> Any:
    """``layer`` with every BatchNorm inside cloned once (``twins``, by identity, so a shared one
    stays shared) into the given mode; the same object where nothing inside changes."""
    if isinstance(layer, nn.BatchNorm):
        if id(layer) not in twins:
            twins[id(layer)] = layer.clone(use_running_average=use_running_average)
        return twins[id(layer)]
    if isinstance(layer, nn.Sequential):
        layers = [_in_mode(child, use_running_average, twins) for child in layer.layers]
        if any(new is not old for new, old in zip(layers, layer.layers, strict=True)):
            return nn.Sequential(layers)
    return layer


@dataclass
class LinenState(FlaxState):
    variables: Tree | None = None  # what net.init returned; a new dict after every write and step
    adopted: dict[LayerPath, Any] = field(default_factory=dict)  # the bound module at each position
    opt_state: Any = None  # optax's state, kept between training calls
    training_net: nn.Module | None = None  # the net with its BatchNorms in training mode


def _state(model: Model) -> LinenState:
    return model.adapter_state


class FlaxBackend(FlaxBase):
    name = "jax"
    lazy_mechanism = "nn.Dense(features): no params until net.init(key, x) sees the input size"
    tie_mechanism = "the same nn.Dense instance at both positions (adopted once, by the first)"
    file_call = "flax.serialization.to_bytes(variables)"

    def __init__(self) -> None:
        self._inits = CompiledPerSpec()

    def new_adapter_state(self) -> LinenState:
        return LinenState()

    def framework_version(self) -> str:
        return f"flax {flax.__version__} (jax {jax.__version__})"

    # -- building ---------------------------------------------------------------------------------
    def new_dense(self, units: int, in_features: int) -> nn.Dense:
        return nn.Dense(units)

    def new_custom_dense(self, units: int, in_features: int) -> MyDense:
        return MyDense(in_features, units)  # the book's MyDense(in_units, units)

    def new_relu(self) -> Any:
        return nn.relu

    def new_embedding(self, vocab: int, dim: int) -> nn.Embed:
        return nn.Embed(num_embeddings=vocab, features=dim)

    def tied_output(self, embedding: nn.Embed, units: int) -> TiedOutput:
        return TiedOutput(embedding, units)

    def new_batchnorm(self, features: int, momentum: float | None, eps: float | None) -> nn.BatchNorm:
        # Built in inference mode; training applies the twin (_training_net). Its features come
        # from the input, as nn.Dense's do.
        return nn.BatchNorm(use_running_average=True, **batchnorm_settings(momentum, eps))

    def finish_sequential(self, container: Any, children: list[Any]) -> nn.Sequential:
        return nn.Sequential(children)

    def child(self, container: nn.Sequential, index: int) -> Any:
        return container.layers[index]

    def finish_model(self, model: Model) -> None:
        # Binding (to no variables: naming needs none) runs Flax's adoption, which clones each
        # outside instance once, so a shared nn.Dense is the very same bound module, with one
        # scope path, at every position.
        bound = model.native.bind({})
        _state(model).adopted = {path: self.layer_at(bound, path) for path, _ in model.spec.walk()}

    def _leaf_keys(self, model: Model, position: str) -> tuple[str, ...]:
        """The leaf's path in the variables dict, e.g. ("params", "layers_2", "kernel")."""
        module, role = self.param_at(model, position, _state(model).adopted, LAYERS)
        return ("params", *module.path, role)

    def _state_keys(self, model: Model, position: str) -> tuple[str, ...]:
        """A statistic's path in the variables dict, e.g. ("batch_stats", "layers_1", "mean")."""
        module, role = self.state_at(model, position, _state(model).adopted, nn.BatchNorm)
        return ("batch_stats", *module.path, role)

    def native_param_name(self, model: Model, position: str) -> str:
        return slash_path(self._leaf_keys(model, position))

    def _training_net(self, model: Model) -> nn.Module:
        state = _state(model)
        if state.training_net is None:
            state.training_net = _in_mode(model.native, False, {})
        return state.training_net

    def freeze(self, model: Model, path: LayerPath) -> None:
        super().freeze(model, path)
        _state(model).opt_state = None  # the partition's labels changed

    # -- lazy shapes and forward ------------------------------------------------------------------
    def collect_params(self, model: Model) -> dict[str, Any]:
        # Nothing before init: the module holds no arrays, not even shapeless ones.
        variables = _state(model).variables or {}
        return named_leaves({"params": variables["params"]} if "params" in variables else {})

    def collect_state(self, model: Model) -> dict[str, Any]:
        variables = _state(model).variables or {}
        return named_leaves({"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {})

    def params_anchor(self, model: Model) -> object:
        return _state(model).variables  # a new dict after every write and every training call

    def materialize(self, model: Model) -> None:
        if _state(model).variables is None:
            ids = model.spec.input_kind == "ids"
            x = model_input(model.spec, np.zeros((1,) if ids else (1, model.spec.in_features)))
            _state(model).variables = self._init(model)(jax.random.PRNGKey(0), x)

    def _init(self, model: Model) -> Callable[..., Tree]:
        """``jax.jit(net.init)``, as Flax's examples write it (op by op, init compiles each random
        op per shape), once per architecture: a linen module is a pure description, so every net
        of one spec inits alike. A deep net inits op by op (see compiles_build)."""
        if not compiles_build(model.spec):
            return model.native.init
        return self._inits.get(model.spec, lambda: jax.jit(model.native.init))

    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)  # the net's BatchNorms are in inference mode: batch_stats stay
        return to_numpy(model.native.apply(_state(model).variables, model_input(model.spec, x)))

    def native_forward_training(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)
        y, updated = self._training_net(model).apply(
            _state(model).variables, model_input(model.spec, x), mutable=["batch_stats"]
        )
        self.keep_state(model, updated)
        return to_numpy(y)

    # -- parameters and batch_stats by position: a leaf of the variables dict ----------------------
    def param_object(self, model: Model, position: str) -> jax.Array:
        return self._leaf(model, self._leaf_keys(model, position))

    def write_native_value(self, model: Model, position: str, value: np.ndarray) -> None:
        self._write_leaf(model, position, self._leaf_keys(model, position), value)

    def state_object(self, model: Model, position: str) -> jax.Array:
        return self._leaf(model, self._state_keys(model, position))

    def write_native_state_value(self, model: Model, position: str, value: np.ndarray) -> None:
        self._write_leaf(model, position, self._state_keys(model, position), value)

    def _leaf(self, model: Model, keys: tuple[str, ...]) -> jax.Array:
        self.materialize(model)
        leaf: Any = _state(model).variables
        for key in keys:
            leaf = leaf[key]
        return leaf

    def _write_leaf(self, model: Model, position: str, keys: tuple[str, ...], value: np.ndarray) -> None:
        old = self._leaf(model, keys)
        leaf = checked_value(f"{position} (native {slash_path(keys)})", value, old.shape)
        _state(model).variables = _replace(_state(model).variables, keys, leaf.astype(old.dtype))

    def state_listing(self, model: Model) -> tuple[str, list[str]]:
        return "variables['batch_stats'] (flax.traverse_util.flatten_dict)", list(self.native_state(model))

    # -- facts ------------------------------------------------------------------------------------
    def listing(self, model: Model) -> tuple[str, list[str]]:
        return "params['params'] (flax.traverse_util.flatten_dict)", list(self.native_params(model))

    def layer_list(self, model: Model) -> tuple[str, list[Any]]:
        # nn.relu is one function object, so every ReLU position counts as the same object.
        return "net.layers", list(model.native.layers)

    def serializations(self, model: Model) -> dict[str, list[str]]:
        variables = _state(model).variables
        state_dict = serialization.to_state_dict(variables)
        return {"flax.serialization.to_state_dict(variables)": list(named_leaves(state_dict))} | (
            super().serializations(model)
        )

    # -- gradients and SGD ------------------------------------------------------------------------
    def grad_input(self, model: Model) -> tuple[Tree, Tree]:
        return _split(_state(model).variables)

    def _objective(self, model: Model, kind: str) -> Callable[[Tree, Tree, jax.Array, Any], Any]:
        """(params, other collections, x, target) -> (loss, the collections after it): the
        training twin, ``batch_stats`` mutable (a net without BatchNorm has none to mutate)."""
        net = self._training_net(model)

        def loss(params: Tree, rest: Tree, x: jax.Array, target: Any) -> Any:
            y, rest = net.apply({"params": params, **rest}, x, mutable=list(rest))
            return objective(y, kind, target), rest

        return loss

    def pure_grad(self, model: Model, kind: str) -> Callable[[Any, jax.Array, Any], tuple[Tree, Tree]]:
        loss = self._objective(model, kind)

        def grads(inputs: tuple[Tree, Tree], x: jax.Array, target: Any) -> tuple[Tree, Tree]:
            params, rest = inputs
            grads, rest = jax.grad(loss, has_aux=True)(params, rest, x, target)
            return {"params": grads}, rest

        return grads

    def keep_state(self, model: Model, state: Tree) -> None:
        if not state:  # a net without BatchNorm: nothing changed, and the tables stay valid
            return
        variables = _state(model).variables
        _state(model).variables = _ordered_like(variables, {**variables, **state})

    def _optimizer(self, model: Model, lr: Any) -> optax.GradientTransformation:
        """SGD at ``lr``; with frozen parameters, partitioned as Flax's transfer-learning guide
        does: a frozen parameter's label gets ``optax.set_to_zero()``, so it is never updated.
        Plain SGD where nothing is frozen: the partition's state is a tree of empty nodes that
        every step would flatten and rebuild (2-4 us a step of about 40 on the tied MLP)."""
        if not model.adapter_state.frozen:
            return optax.sgd(lr)
        labels = traverse_util.path_aware_map(
            lambda keys, _: "frozen" if self.is_frozen(model, slash_path(("params", *keys))) else "trainable",
            _state(model).variables["params"],
        )
        return optax.partition({"trainable": optax.sgd(lr), "frozen": optax.set_to_zero()}, labels)

    def pure_step(self, model: Model, kind: str) -> Step:
        loss, optimizer = self._objective(model, kind), functools.partial(self._optimizer, model)

        def step(carry: Any, lr: jax.Array, x: jax.Array, target: Any) -> Any:
            params, rest, opt_state = carry
            tx = optimizer(lr)  # lr is traced: a new rate never retraces
            (value, rest), grads = jax.value_and_grad(loss, has_aux=True)(params, rest, x, target)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), rest, opt_state), value, {"params": grads}

        return step

    def train_carry(self, model: Model) -> tuple[Any, ...]:
        params, rest = _split(_state(model).variables)
        if _state(model).opt_state is None:
            # SGD's state holds nothing that depends on the rate, so it serves every rate.
            _state(model).opt_state = self._optimizer(model, 0.0).init(params)
        return params, rest, _state(model).opt_state

    def keep_carry(self, model: Model, carry: tuple[Any, ...]) -> None:
        params, rest, opt_state = carry
        _state(model).opt_state = opt_state
        self.keep_state(model, {"params": params, **rest})

    # -- files ------------------------------------------------------------------------------------
    def file_tree(self, model: Model) -> Tree:
        return _state(model).variables

    def native_file_keys(self, model: Model) -> dict[str, str]:
        # From the adopted modules alone: naming needs no init, so the model is left as it was. Each
        # position is looked up, so a tie stored twice would show as two keys. Dense and Embedding
        # parameters only, as before: a BatchNorm's entries (and batch_stats) are not mapped here.
        return {
            slash_path(self._leaf_keys(model, position)): param.name
            for param in model.spec.params
            if param.kind != "batchnorm"
            for position in param.positions
        }
