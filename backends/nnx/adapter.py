"""Flax NNX adapter: ``nnx.Sequential`` of ``nnx.Embed``, ``nnx.Linear``, ``nnx.BatchNorm`` and
``nnx.relu``; a tie is one ``nnx.Linear`` (or ``nnx.BatchNorm``) object placed at two positions,
and an output tied to the embedding is a ``TiedOutput`` holding the very ``nnx.Embed``, through
``Embed.attend``.

NNX quirks this adapter is built around:
- NNX is eager: ``nnx.Linear(in, out, rngs=...)`` creates its kernel at construction, so every
  Dense needs its input width and the model holds full shapes before any forward;
- a parameter is an ``nnx.Param`` object held by its layer and mutated in place
  (``param[...] = value``); a shared layer holds one Param, so a tie is one object, observed;
- ``nnx.state(net)`` walks the object graph and visits a shared layer once, at its first path
  (``layers/2``): the listing and the msgpack file hold a tied parameter once; an embedding's
  table once too, at ``layers/0/embedding``, though the ``TiedOutput`` holds its Embed as well;
- a BatchNorm's running statistics are ``nnx.BatchStat`` variables beside its ``nnx.Param``s,
  updated in place by a forward in training mode; the mode is the module attribute
  ``use_running_average``, set over the whole net by ``net.eval()`` / ``net.train()``;
- freezing is a filter: the trainable parameters are ``nnx.All(nnx.Param, nnx.Not(frozen))``,
  given to ``nnx.Optimizer(wrt=...)`` and to the gradient (``nnx.DiffState``), so a frozen
  parameter has no gradient and no update; the layer's mode is unchanged, so a frozen BatchNorm
  still trains its statistics.
Fast path: the "functional training loop" of Flax's performance guide: ``nnx.split`` the net and
its ``nnx.Optimizer`` once per call, ``jax.jit`` one pure step over the state (``nnx.merge``,
``nnx.value_and_grad``, ``optimizer.update``), ``nnx.update`` at the end; see backends._flax_common.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from backends._flax_common import FlaxBase, FlaxLayers, batchnorm_settings, slash_path
from backends._jax_common import (
    Step,
    Tree,
    checked_value,
    model_input,
    objective,
    to_numpy,
)
from common.core.interface import Model
from common.core.spec import ModelSpec

__all__ = ["MyLinear", "NNXBackend", "TiedOutput"]


class TiedOutput(nnx.Module):
    """A Linear whose kernel is ``embedding``'s table, through Flax's ``Embed.attend``: ``x @
    table.T`` plus a bias of its own, zeros at init as ``nnx.Linear``'s. The Embed is the very
    object the net looks ids up with, so the graph holds its table once."""

    def __init__(self, embedding: nnx.Embed, features: int) -> None:
        self.embedding = embedding
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.embedding.attend(x) + self.bias[...]


class MyLinear(nnx.Module):
    """D2L 6.5's custom layer in NNX: ``weight`` and ``bias`` are nnx.Param attributes the class
    creates itself, eagerly, (in, out) as nnx.Linear's; no ReLU inside (the spec's ReLU is a layer
    of its own)."""

    def __init__(self, in_units: int, units: int, rngs: nnx.Rngs) -> None:
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (in_units, units), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((units,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight[...] + self.bias[...]


LAYERS = FlaxLayers(dense=nnx.Linear, norm=nnx.BatchNorm, embed=nnx.Embed, tied=TiedOutput, custom=MyLinear)


class NNXBackend(FlaxBase):
    name = "nnx"
    lazy_mechanism = (
        "none: nnx.Linear(in_features, out_features, rngs=...) creates its kernel at construction"
    )
    tie_mechanism = "the same nnx.Linear object at both positions"
    file_call = "flax.serialization.to_bytes(nnx.to_pure_dict(nnx.state(net)))"

    def __init__(self) -> None:
        self._seed = 0
        self._rngs = nnx.Rngs(self._seed)

    def framework_version(self) -> str:
        return f"flax {flax.__version__} NNX (jax {jax.__version__})"

    def seed(self, seed: int) -> None:
        self._seed = seed

    # -- building ---------------------------------------------------------------------------------
    def construct(self, spec: ModelSpec, build: Callable[[], Any]) -> nnx.Sequential:
        """Eager: each random init runs op by op, and JAX caches those ops per shape, so a suite
        that builds hundreds of small models compiles almost nothing. Compiling each build under
        ``nnx.jit`` (as Flax's guide creates a model) cost a whole XLA compile per architecture
        and seed (36 builds of the six named models: 17.5 s of CPU compiled against 2.3 s eager)."""
        self._rngs = nnx.Rngs(self._seed)  # every model's default init starts from the seed
        return build()

    def new_dense(self, units: int, in_features: int) -> nnx.Linear:
        return nnx.Linear(in_features, units, rngs=self._rngs)

    def new_custom_dense(self, units: int, in_features: int) -> MyLinear:
        return MyLinear(in_features, units, rngs=self._rngs)

    def new_relu(self) -> Any:
        return nnx.relu

    def new_embedding(self, vocab: int, dim: int) -> nnx.Embed:
        return nnx.Embed(vocab, dim, rngs=self._rngs)

    def tied_output(self, embedding: nnx.Embed, units: int) -> TiedOutput:
        return TiedOutput(embedding, units)

    def new_batchnorm(self, features: int, momentum: float | None, eps: float | None) -> nnx.BatchNorm:
        # Training mode by default (use_running_average=False); each forward sets the mode.
        return nnx.BatchNorm(features, rngs=self._rngs, **batchnorm_settings(momentum, eps))

    def finish_sequential(self, container: Any, children: list[Any]) -> nnx.Sequential:
        return nnx.Sequential(*children)

    def child(self, container: nnx.Sequential, index: int) -> Any:
        return container.layers[index]

    # -- shapes and forward -----------------------------------------------------------------------
    def collect_params(self, model: Model) -> dict[str, nnx.Variable]:
        # The Variables themselves (not copies), at the path where the graph walk first meets them.
        return {slash_path(path): var for path, var in nnx.to_flat_state(nnx.state(model.native, nnx.Param))}

    def collect_state(self, model: Model) -> dict[str, nnx.Variable]:
        return {
            slash_path(path): var for path, var in nnx.to_flat_state(nnx.state(model.native, nnx.BatchStat))
        }

    def materialize(self, model: Model) -> None:
        """Nothing to do: NNX built every parameter at construction."""

    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        if model.spec.has_batchnorm:  # a walk over every module: only where a mode matters
            model.native.eval()  # BatchNorm normalizes by its running statistics, keeps them
        return to_numpy(model.native(model_input(model.spec, x)))

    def native_forward_training(self, model: Model, x: np.ndarray) -> np.ndarray:
        model.native.train()  # batch statistics; the BatchStat variables are updated in place
        return to_numpy(model.native(model_input(model.spec, x)))

    # -- parameters by position -------------------------------------------------------------------
    def param_object(self, model: Model, position: str) -> nnx.Param:
        layer, role = self.param_at(model, position, self.position_table(model), LAYERS)
        return getattr(layer, role)

    def native_param_name(self, model: Model, position: str) -> str:
        return self.describe_param(model, self.param_object(model, position))[0]

    def _trainable(self, model: Model) -> Any:
        """The filter of what trains: every nnx.Param but the frozen ones, by path."""
        frozen = model.adapter_state.frozen

        def is_frozen(path: tuple[Any, ...], _: Any) -> bool:
            return slash_path(path) in frozen

        return nnx.All(nnx.Param, nnx.Not(is_frozen)) if frozen else nnx.Param

    # -- state: BatchStat variables, by position --------------------------------------------------
    def state_object(self, model: Model, position: str) -> nnx.BatchStat:
        layer, role = self.state_at(model, position, self.position_table(model), nnx.BatchNorm)
        return getattr(layer, role)

    def write_native_state_value(self, model: Model, position: str, value: np.ndarray) -> None:
        stat = self.state_object(model, position)
        stat[...] = checked_value(position, value, stat.shape).astype(stat.dtype)

    def state_listing(self, model: Model) -> tuple[str, list[str]]:
        return "nnx.state(net, nnx.BatchStat)", list(self.native_state(model))

    def write_native_value(self, model: Model, position: str, value: np.ndarray) -> None:
        param = self.param_object(model, position)
        param[...] = checked_value(position, value, param.shape).astype(param.dtype)

    # -- facts ------------------------------------------------------------------------------------
    def listing(self, model: Model) -> tuple[str, list[str]]:
        return "nnx.state(net, nnx.Param)", list(self.native_params(model))

    def layer_list(self, model: Model) -> tuple[str, list[Any]]:
        # nnx.relu is one function object, so every ReLU position counts as the same object.
        return "net.layers", list(model.native.layers)

    def serializations(self, model: Model) -> dict[str, list[str]]:
        state = nnx.to_flat_state(nnx.state(model.native))
        return {"nnx.state(net)": [slash_path(path) for path, _ in state]} | super().serializations(model)

    # -- gradients and SGD ------------------------------------------------------------------------
    def grad_input(self, model: Model) -> nnx.State:
        return nnx.state(model.native)

    def pure_grad(self, model: Model, kind: str) -> Callable[[nnx.State, jax.Array, Any], tuple[Tree, Any]]:
        graphdef, wrt = nnx.graphdef(model.native), nnx.DiffState(0, self._trainable(model))

        def grads(state: nnx.State, x: jax.Array, target: Any) -> tuple[Tree, Any]:
            net = nnx.merge(graphdef, state)
            net.train()  # on the merged copy, at trace time: batch statistics, BatchStats updated
            grads = nnx.grad(lambda n: objective(n(x), kind, target), argnums=wrt)(net)
            return nnx.to_pure_dict(grads), nnx.state(net, nnx.BatchStat)

        return grads

    def keep_state(self, model: Model, state: nnx.State) -> None:
        if jax.tree.leaves(state):  # a net without BatchNorm: no walk over its graph for nothing
            nnx.update(model.native, state)

    def _optimizer(self, model: Model) -> nnx.Optimizer:
        # Built once per model. Its rate is set inside each step, from its traced argument
        # (pure_step), as the linen adapter does: plain SGD's state holds nothing that depends on
        # the rate, so a new rate never retraces. optax.inject_hyperparams would do the same with
        # two more state leaves per step, and dispatch time grows with the leaves: 0.144 against
        # 0.109 ms a step.
        return self.compiled(
            model,
            "optimizer",
            lambda: nnx.Optimizer(model.native, optax.sgd(0.0), wrt=self._trainable(model)),
        )

    def pure_step(self, model: Model, kind: str) -> Step:
        graphdef, _ = nnx.split((model.native, self._optimizer(model)))
        wrt = nnx.DiffState(0, self._trainable(model))  # a frozen parameter gets no gradient

        def step(carry: Any, lr: jax.Array, x: jax.Array, target: Any) -> Any:
            (state,) = carry
            net, optimizer = nnx.merge(graphdef, state)
            net.train()  # on the merged copy, at trace time: batch statistics, BatchStats updated
            optimizer.tx = optax.sgd(lr)  # lr is traced: the merged copy's rate, for this step
            value, grads = nnx.value_and_grad(lambda n: objective(n(x), kind, target), argnums=wrt)(net)
            optimizer.update(net, grads)
            return (nnx.state((net, optimizer)),), value, nnx.to_pure_dict(grads)

        return step

    def train_carry(self, model: Model) -> tuple[nnx.State]:
        return (nnx.state((model.native, self._optimizer(model))),)

    def keep_carry(self, model: Model, carry: tuple[nnx.State]) -> None:
        nnx.update((model.native, self._optimizer(model)), carry[0])

    # -- files ------------------------------------------------------------------------------------
    def file_tree(self, model: Model) -> Tree:
        return nnx.to_pure_dict(nnx.state(model.native))

    def native_file_keys(self, model: Model) -> dict[str, str]:
        # The file is nnx.state's tree: each parameter once, under its first path.
        return self.owners(model)
