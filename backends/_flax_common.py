"""What the two Flax adapters share: Flax linen (backends/jax) and Flax NNX (backends/nnx).

Both keep gradients functional (returned by a transform, never stored on a parameter), both
name a parameter by its path in a nested dict ("params/layers_0/kernel", "layers/0/kernel"),
and both write their own file as msgpack through ``flax.serialization``. So ``FlaxBase`` here
implements, once, everything that follows from a table of native name -> parameter object:
description, lookup by native name, the unbuilt listing, the native file, gradients by owner,
and the fast training path. Each adapter supplies that table and one pure SGD step.

Fast path: one ``jax.jit`` step per model and loss kind, ``watch`` a static argument; the
learning rate rides in the carry as a device scalar, so a new rate never retraces; losses and
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

from backends._jax_common import JaxPlacement, Step, Tree, stacked, target_array, to_numpy
from common.core.interface import NOT_STORED, Backend, Model
from common.core.oracle import Loss
from common.core.spec import split_param_name
from common.core.untrusted import shown
from common.errors import ParamFileError

__all__ = ["FlaxBase", "FlaxState", "named_leaves", "slash_path"]

_NATIVE_ROLE = {"weight": "kernel", "bias": "bias"}


def slash_path(keys: tuple[Any, ...]) -> str:
    """A key path as Flax users write it: ``("layers", 0, "kernel")`` -> ``layers/0/kernel``."""
    return "/".join(map(str, keys))


def named_leaves(tree: Tree) -> dict[str, Any]:
    """A nested dict's leaves by slash path, in the dict's own order."""
    return {slash_path(keys): leaf for keys, leaf in traverse_util.flatten_dict(tree).items()}


@dataclass
class FlaxState:
    # (anchor, native name -> parameter, id(parameter) -> native name), for the current anchor
    param_tables: tuple[object, dict[str, Any], dict[int, str]] | None = None


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

    def params_anchor(self, model: Model) -> object:
        """An object that is replaced whenever the parameter objects are (by default the net,
        whose parameters are never replaced): collect_params is cached until it changes."""
        return model.native

    @abc.abstractmethod
    def file_tree(self, model: Model) -> Tree:
        """The nested dict the framework's own file stores."""

    @abc.abstractmethod
    def grad_input(self, model: Model) -> Any:
        """What pure_grad differentiates: the parameters, as device arrays."""

    @abc.abstractmethod
    def pure_grad(self, model: Model, kind: str) -> Callable[[Any, jax.Array, Any], Tree]:
        """(grad_input, x, target) -> the framework's gradients of the loss, as a nested dict
        keyed like the native names; pure, for jax.jit."""

    @abc.abstractmethod
    def pure_step(self, model: Model, kind: str) -> Step:
        """One pure step of the framework's own SGD, for jax.jit."""

    @abc.abstractmethod
    def train_carry(self, model: Model, lr: float) -> Any:
        """What the step threads, as device arrays: parameters, optimizer state and ``lr``."""

    @abc.abstractmethod
    def keep_carry(self, model: Model, carry: Any) -> None:
        """Store the carry after the last step back into the model."""

    # -- built once on the table ------------------------------------------------------------------
    @staticmethod
    def dense_at(model: Model, position: str, table: dict[Any, Any], kind: type) -> tuple[Any, str]:
        """The ``kind`` layer that ``table`` (a position table) holds at a Dense position, and
        the native name of the parameter role (``kernel``, ``bias``); KeyError naming
        ``position`` when it is no Dense position."""
        model.spec.owner_of(position)
        path, role = split_param_name(position)
        layer = table[path]
        if not isinstance(layer, kind):
            raise KeyError(f"{position!r}: the layer at {path} is {layer!r}, not a {kind.__qualname__}")
        return layer, _NATIVE_ROLE[role]

    def native_params(self, model: Model) -> dict[str, Any]:
        return self._param_tables(model)[0]

    def _param_tables(self, model: Model) -> tuple[dict[str, Any], dict[int, str]]:
        # Collected once per anchor, not once per parameter: a walk per describe_param made
        # list_params quadratic (50 s for a 300-layer NNX net). The cache holds the anchor
        # itself, so its id cannot be reused by a newer one.
        state: FlaxState = model.adapter_state
        anchor, cached = self.params_anchor(model), state.param_tables
        if cached is None or cached[0] is not anchor:
            params = self.collect_params(model)
            cached = state.param_tables = (anchor, params, {id(p): n for n, p in params.items()})
        return cached[1], cached[2]

    def describe_param(self, model: Model, param: Any) -> tuple[str, tuple[int, ...], str]:
        return self._param_tables(model)[1][id(param)], tuple(param.shape), str(param.dtype)

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

    def by_owner(self, model: Model, tree: Tree) -> dict[str, np.ndarray]:
        # A shared parameter is one leaf, so jax already summed the gradient over its uses.
        leaves = named_leaves(tree)
        return {owner: to_numpy(leaves[native]) for native, owner in self.owners(model).items()}

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        # Jitted once per model: eager autodiff re-runs Python for every layer on every call.
        grads = self.compiled(model, ("grad", loss.kind), lambda: jax.jit(self.pure_grad(model, loss.kind)))
        return self.by_owner(model, grads(self.grad_input(model), jnp.asarray(x), target_array(loss)))

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        step = self.compiled(model, ("sgd", loss.kind), lambda: self._jit(model, loss.kind))
        inputs, target = jnp.asarray(x), target_array(loss)
        carry, losses, grads = self.train_carry(model, lr), [], []
        for _ in range(steps):
            carry, value, applied = step(carry, inputs, target, watch=watch)
            losses.append(value)
            grads.append(applied)
        self.keep_carry(model, carry)
        values = stacked(losses).astype(np.float64)
        if not watch:
            return values, {}
        flat, params, start, watched = stacked(grads), self.native_params(model), 0, {}
        for native, owner in self.owners(model).items():
            shape = tuple(params[native].shape)
            size = int(np.prod(shape))
            watched[owner] = flat[:, start : start + size].reshape(steps, *shape)
            start += size
        return values, watched

    def _jit(self, model: Model, kind: str) -> Callable[..., Any]:
        step, order = self.pure_step(model, kind), list(self.owners(model))

        def traced(carry: Any, x: jax.Array, target: Any, watch: bool) -> Any:
            self.note_trace(model)  # Python runs here once per trace
            carry, value, grads = step(carry, x, target)
            if not watch:
                return carry, value, None
            # One buffer a step, in owners() order, rather than one per parameter: every output
            # of a jitted call costs dispatch time, which is most of a step at this size.
            leaves = named_leaves(grads)
            return carry, value, jnp.concatenate([leaves[name].ravel() for name in order])

        return jax.jit(traced, static_argnames="watch")

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
