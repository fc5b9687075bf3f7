"""What the two Flax adapters share: Flax linen (backends/jax) and Flax NNX (backends/nnx).

Both keep gradients functional (returned by a transform, never stored on a parameter), both
name a parameter by its path in a nested dict ("params/layers_0/kernel", "layers/0/kernel"),
and both write their own file as msgpack through ``flax.serialization``. So ``FlaxBase`` here
implements, once, everything that follows from a table of native name -> parameter object (and
one of native name -> BatchNorm statistic): description, lookup by native name, the unbuilt
listing, the native file, gradients by owner, freezing, and the fast training path. Each adapter
supplies those tables, one pure gradient and one pure SGD step.

Both tie an output projection to an embedding the same way, Flax's own (its lm1b and wmt
examples): the output is a small module holding the very ``Embed`` (attribute ``embedding``) and
a bias of its own, and computes ``embedding.attend(x) + bias``: the table, (vocab, dim), applied
transposed. So the table is one parameter, under the Embed's path only; its gradient is summed
by jax over the lookup and the attend.

Both keep BatchNorm statistics apart from parameters (linen's ``batch_stats`` collection, NNX's
``BatchStat`` variables), and neither has a trainable flag: a frozen parameter is left out of
the gradients and of the optimizer by its native name (an optax partition in linen, an
``nnx.Optimizer``/``nnx.DiffState`` filter in NNX); the layer's mode is not changed, so a frozen
BatchNorm still normalizes by the batch and updates its statistics.

Fast path: one ``jax.jit`` step per model, loss kind and ``watch``, called flat as
``(lr, x, target, *carry)``: the carry (parameters, running statistics, optimizer state) is donated
to the step, which writes the next one into its buffers (the first step gets copies, so the model
keeps its own arrays until the last); the learning rate is a traced device scalar, so a new rate
never retraces; the input, target and rate keep their device copies while unchanged; losses and
watched gradients stay device arrays until the last step, then cross to numpy once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from backends._jax_common import (
    JaxPlacement,
    Step,
    Tree,
    device_array,
    fresh_copies,
    model_input,
    stacked,
    target_array,
    to_numpy,
)
from common.core.interface import NOT_STORED, Backend, Model
from common.core.oracle import Loss
from common.core.spec import STATE_ROLES, LayerPath, param_name, split_param_name
from common.core.untrusted import shown
from common.errors import ParamFileError

__all__ = [
    "ROLE_NAMES",
    "FlaxBase",
    "FlaxLayers",
    "FlaxState",
    "batchnorm_settings",
    "named_leaves",
    "slash_path",
]

# Canonical role -> the attribute (and key) Flax gives it, in nn.Dense/nnx.Linear and BatchNorm.
_DENSE_ROLE = {"weight": "kernel", "bias": "bias"}
_NORM_ROLE = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_TABLE = "embedding"  # where nn.Embed and nnx.Embed keep their table
_CUSTOM_ROLE = {"weight": "weight", "bias": "bias"}  # the names D2L 6.5's MyDense gives its own
# Parameter kind -> canonical role -> Flax's name, state roles included (linen and NNX alike).
ROLE_NAMES = {"dense": _DENSE_ROLE, "batchnorm": _NORM_ROLE, "embedding": {"weight": _TABLE}}


@dataclass(frozen=True)
class FlaxLayers:
    """The layer classes an adapter builds, by the part they play, for ``param_at``."""

    dense: type  # nn.Dense, nnx.Linear
    norm: type  # nn.BatchNorm, nnx.BatchNorm
    embed: type  # nn.Embed, nnx.Embed
    tied: type  # the adapter's tied output: its Embed at ``.embedding``, its own ``.bias``
    custom: type  # the adapter's custom layer (D2L 6.5's MyDense): its own ``weight`` and ``bias``


def slash_path(keys: tuple[Any, ...]) -> str:
    """A key path as Flax users write it: ``("layers", 0, "kernel")`` -> ``layers/0/kernel``."""
    return "/".join(map(str, keys))


def named_leaves(tree: Tree) -> dict[str, Any]:
    """A nested dict's leaves by slash path, in the dict's own order."""
    return {slash_path(keys): leaf for keys, leaf in traverse_util.flatten_dict(tree).items()}


def batchnorm_settings(momentum: float | None, eps: float | None) -> dict[str, float]:
    """The keyword arguments of ``nn.BatchNorm`` / ``nnx.BatchNorm`` for a canonical momentum
    (the weight of the new batch) and epsilon; Flax's ``momentum`` is the weight of the OLD value,
    so canonical m is Flax's 1 - m. An unset one is left out: Flax's default."""
    settings = {"momentum": None if momentum is None else 1.0 - momentum, "epsilon": eps}
    return {key: value for key, value in settings.items() if value is not None}


@dataclass
class Tables:
    """Native name -> object, and back by identity, for parameters and BatchNorm statistics, as
    collected for one anchor."""

    anchor: object
    params: dict[str, Any]
    param_names: dict[int, str]
    state: dict[str, Any]
    state_names: dict[int, str]


@dataclass
class FlaxState:
    tables: Tables | None = None  # for the current anchor
    frozen: frozenset[str] = frozenset()  # native names of the frozen parameters (freeze)


class FlaxBase(JaxPlacement, Backend):
    """A Flax adapter: parameters found by path in nested dicts, gradients returned by jax."""

    native_file_suffix = ".msgpack"
    file_call: ClassVar[str]  # how the native file is written, as a practitioner writes it

    def new_adapter_state(self) -> FlaxState:
        return FlaxState()

    @abc.abstractmethod
    def collect_params(self, model: Model) -> dict[str, Any]:
        """Native name -> parameter object, in the framework's own listing order; empty while
        the framework holds none. Never builds anything."""

    @abc.abstractmethod
    def collect_state(self, model: Model) -> dict[str, Any]:
        """Native name -> BatchNorm statistic (the object state_object returns), in the
        framework's own state listing order; empty while it holds none. Never builds anything."""

    def params_anchor(self, model: Model) -> object:
        """An object that is replaced whenever the parameter or state objects are (by default the
        net, whose variables are never replaced): the tables are cached until it changes."""
        return model.native

    @abc.abstractmethod
    def native_param_name(self, model: Model, position: str) -> str:
        """The native name of the parameter at ``position``, as collect_params keys it; needs no
        built parameters (freeze runs before a lazy framework has any)."""

    @abc.abstractmethod
    def file_tree(self, model: Model) -> Tree:
        """The nested dict the framework's own file stores."""

    @abc.abstractmethod
    def grad_input(self, model: Model) -> Any:
        """What pure_grad takes: the parameters and running statistics, as device arrays."""

    @abc.abstractmethod
    def pure_grad(self, model: Model, kind: str) -> Callable[[Any, jax.Array, Any], tuple[Tree, Any]]:
        """(grad_input, x, target) -> (the framework's gradients of the loss in training mode, as
        a nested dict keyed like the native names; the running statistics that training forward
        left, for keep_state); pure, for jax.jit."""

    @abc.abstractmethod
    def keep_state(self, model: Model, state: Any) -> None:
        """Store the running statistics pure_grad returned back into the model."""

    @abc.abstractmethod
    def pure_step(self, model: Model, kind: str) -> Step:
        """One pure step of the framework's own SGD in training mode (batch statistics, running
        statistics updated), frozen parameters held, for jax.jit."""

    @abc.abstractmethod
    def train_carry(self, model: Model) -> tuple[Any, ...]:
        """What the step threads, as device arrays: parameters, running statistics and optimizer
        state."""

    @abc.abstractmethod
    def keep_carry(self, model: Model, carry: Any) -> None:
        """Store the carry after the last step back into the model."""

    # -- built once on the table ------------------------------------------------------------------
    @staticmethod
    def param_at(
        model: Model, position: str, table: dict[LayerPath, Any], layers: FlaxLayers
    ) -> tuple[Any, str]:
        """The module holding the parameter at a position, reached through the layer that
        ``table`` (a position table) holds there, and the parameter's native name (``kernel``,
        ``scale``, ``embedding``, ``bias``): a tied output's weight is held by its Embed.
        KeyError naming ``position`` when it is no such position."""
        model.spec.owner_of(position)
        path, role = split_param_name(position)
        layer = table[path]
        if isinstance(layer, layers.dense):
            return layer, _DENSE_ROLE[role]
        if isinstance(layer, layers.custom):
            return layer, _CUSTOM_ROLE[role]
        if isinstance(layer, layers.norm):
            return layer, _NORM_ROLE[role]
        if isinstance(layer, layers.embed):
            return layer, _TABLE
        if isinstance(layer, layers.tied):
            return (layer.embedding, _TABLE) if role == "weight" else (layer, "bias")
        kinds = ", ".join(
            k.__qualname__ for k in (layers.dense, layers.custom, layers.norm, layers.embed, layers.tied)
        )
        raise KeyError(f"{position!r}: the layer at {path} is {layer!r}, not one of {kinds}")

    @staticmethod
    def state_at(model: Model, position: str, table: dict[LayerPath, Any], norm: type) -> tuple[Any, str]:
        """The BatchNorm that ``table`` holds at a state position (``layers.1.running_mean``)
        and the native name of the statistic (``mean``, ``var``); KeyError naming ``position``."""
        model.spec.state_owner_of(position)
        path, role = split_param_name(position, STATE_ROLES)
        layer = table[path]
        if not isinstance(layer, norm):
            raise KeyError(f"{position!r}: the layer at {path} is {layer!r}, not a {norm.__qualname__}")
        return layer, _NORM_ROLE[role]

    def native_params(self, model: Model) -> dict[str, Any]:
        return self._tables(model).params

    def native_state(self, model: Model) -> dict[str, Any]:
        return self._tables(model).state

    def _tables(self, model: Model) -> Tables:
        # Collected once per anchor, not once per parameter: a walk per describe_param made
        # list_params quadratic (50 s for a 300-layer NNX net). The cache holds the anchor
        # itself, so its id cannot be reused by a newer one.
        state: FlaxState = model.adapter_state
        anchor, cached = self.params_anchor(model), state.tables
        if cached is None or cached.anchor is not anchor:
            params, stats = self.collect_params(model), self.collect_state(model)
            cached = state.tables = Tables(
                anchor,
                params,
                {id(p): n for n, p in params.items()},
                stats,
                {id(s): n for n, s in stats.items()},
            )
        return cached

    def describe_param(self, model: Model, param: Any) -> tuple[str, tuple[int, ...], str]:
        return self._tables(model).param_names[id(param)], tuple(param.shape), str(param.dtype)

    def describe_state(self, model: Model, state: Any) -> tuple[str, tuple[int, ...], str]:
        return self._tables(model).state_names[id(state)], tuple(state.shape), str(state.dtype)

    def native_state_value(self, model: Model, position: str) -> np.ndarray:
        return to_numpy(self.state_object(model, position))

    # -- freezing: the frozen parameters' native names, left out of gradients and updates --------
    def freeze(self, model: Model, path: LayerPath) -> None:
        state: FlaxState = model.adapter_state
        names = {self.native_param_name(model, param_name(path, role)) for role in model.spec.roles_at(path)}
        state.frozen = state.frozen | names
        model.compiled.clear()  # compiled steps and optimizers hold the trainable set they saw

    def is_frozen(self, model: Model, native_name: str) -> bool:
        return native_name in model.adapter_state.frozen

    def unbuilt_params(self, model: Model) -> dict[str, str]:
        return {name: str(tuple(p.shape)) for name, p in self.native_params(model).items()}

    def native_value(self, model: Model, position: str) -> np.ndarray:
        return to_numpy(self.param_object(model, position))

    def native_value_by_name(self, model: Model, native_name: str) -> np.ndarray:
        params = self.native_params(model)
        if native_name not in params:
            raise KeyError(f"{native_name!r} is not a parameter path; paths: {', '.join(params)}")
        return to_numpy(params[native_name])

    def stored_grad(self, model: Model, param: Any) -> Any:
        # A jax array (and an NNX Variable, which forwards attributes to its array) has no .grad.
        return getattr(param, "grad", NOT_STORED)

    def owners(self, model: Model) -> dict[str, str]:
        """Native name -> canonical owner, for every unique parameter."""
        return {self.describe_param(model, p)[0]: name for name, p, _ in self.observed_params(model)}

    def trainable_owners(self, model: Model) -> dict[str, str]:
        """owners(), less the frozen parameters: what has a gradient."""
        owners = self.owners(model)
        return {native: owner for native, owner in owners.items() if not self.is_frozen(model, native)}

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        # Jitted once per model: eager autodiff re-runs Python for every layer on every call.
        grads = self.compiled(model, ("grad", loss.kind), lambda: self._jit_grad(model, loss.kind))
        leaves, state = grads(self.grad_input(model), model_input(model.spec, x), target_array(loss))
        self.keep_state(model, state)  # a training forward updates the running statistics
        # A shared parameter is one leaf, so jax already summed the gradient over its uses.
        return {owner: to_numpy(leaves[native]) for native, owner in self.trainable_owners(model).items()}

    def _jit_grad(self, model: Model, kind: str) -> Callable[..., Any]:
        grad, trainable = self.pure_grad(model, kind), list(self.trainable_owners(model))

        def traced(inputs: Any, x: jax.Array, target: Any) -> Any:
            grads, state = grad(inputs, x, target)
            leaves = named_leaves(grads)  # a frozen parameter's gradient never leaves the program
            return {name: leaves[name] for name in trainable}, state

        return jax.jit(traced)

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        step = self.compiled(model, ("sgd", loss.kind, watch), lambda: self._jit(model, loss.kind, watch))
        inputs, target = model_input(model.spec, x), target_array(loss)
        rate = device_array("rate", lr, np.float32)  # traced: a new rate never retraces
        carry, losses, grads = fresh_copies(self.train_carry(model)), [], []  # the step donates it
        for _ in range(steps):
            *carry, value, applied = step(rate, inputs, target, *carry)
            losses.append(value)
            grads.append(applied)
        self.keep_carry(model, tuple(carry))
        values = stacked(losses).astype(np.float64)
        if not watch:
            return values, {}
        flat, params, start, watched = stacked(grads), self.native_params(model), 0, {}
        for native, owner in self.trainable_owners(model).items():
            shape = tuple(params[native].shape)
            size = int(np.prod(shape))
            watched[owner] = flat[:, start : start + size].reshape(steps, *shape)
            start += size
        return values, watched

    def _jit(self, model: Model, kind: str, watch: bool) -> Callable[..., Any]:
        """The step as one flat call, (lr, x, target, *carry) -> (*carry, loss, gradients or
        None): at this size dispatch is most of a step, and a carry passed as one nested tuple,
        the rate returned with it, took 11-19% longer a step than the same program called flat
        (the linen BatchNorm model, measured here). One program per ``watch``: a keyword
        argument is slower to dispatch than none. The carry is donated (native_train passes
        copies), so XLA writes the new one into its buffers rather than allocating."""
        step, order = self.pure_step(model, kind), list(self.trainable_owners(model))
        carried = len(self.train_carry(model))

        def traced(lr: jax.Array, x: jax.Array, target: Any, *carry: Any) -> Any:
            self.note_trace(model)  # Python runs here once per trace
            carry, value, grads = step(carry, lr, x, target)
            if not watch:
                return *carry, value, None
            # One buffer a step, in owners() order, rather than one per parameter: every output
            # of a jitted call costs dispatch time, which is most of a step at this size.
            leaves = named_leaves(grads)
            return *carry, value, jnp.concatenate([leaves[name].ravel() for name in order])

        return jax.jit(traced, donate_argnums=tuple(range(3, 3 + carried)))

    def serializations(self, model: Model) -> dict[str, list[str]]:
        restored = serialization.msgpack_restore(serialization.to_bytes(self.file_tree(model)))
        return {f"{self.file_call} (msgpack)": list(named_leaves(restored))}

    def write_native_file(self, model: Model, file: str) -> str:
        self.materialize(model)
        with open(file, "wb") as handle:
            handle.write(serialization.to_bytes(self.file_tree(model)))
        return self.file_call

    def read_native_file_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        with open(file, "rb") as handle:
            # msgpack_restore decodes plain data (nested dicts of numpy arrays); it runs no code.
            restored = serialization.msgpack_restore(handle.read())
        if not isinstance(restored, dict):
            kind = type(restored).__name__
            raise ParamFileError(
                f"not a {self.name} native parameter file: it holds a {kind}, not a dict of arrays"
            )
        entries = [
            (slash_path(keys), np.asarray(leaf))
            for keys, leaf in traverse_util.flatten_dict(restored).items()
        ]
        # A key holding "/" and a nested key ({"a/b": x} beside {"a": {"b": y}}), or 0 beside "0",
        # name one entry twice: refused, not resolved by whichever comes last.
        seen: set[str] = set()
        for name, _ in entries:
            if name in seen:
                raise ParamFileError(
                    f"two entries are named {shown(name)} (a key holding '/' and a nested key?)"
                )
            seen.add(name)
        return entries
