"""Equinox adapter: ``eqx.nn.Sequential`` of ``eqx.nn.Linear`` and ``eqx.nn.Lambda(jax.nn.relu)``;
a tie is ``eqx.nn.Shared`` around the whole net.

Equinox quirks this adapter is built around:
- a model is an immutable PyTree: a write (``eqx.tree_at``) or an SGD step returns a new tree, so
  every layer and parameter is looked up in the current ``model.native``, never in objects the
  builder saw (the base class's position table goes stale after the first update);
- the same ``eqx.nn.Linear`` at two positions of a PyTree is two copies as soon as anything
  updates it. ``eqx.nn.Shared(net, where, get)`` stores each tied position as a ``SharedNode``
  placeholder, and ``shared()`` puts the owner's layer back there with its very arrays: a tie is
  one jax array at both positions (observed by ``is``), and jax sums its gradient over the uses.
  The two layer objects are not one (``shared()`` rebuilds the PyTree nodes around the arrays);
- ``eqx.nn.Linear(in, out, key=...)`` is eager, weight ``(out, in)``, and maps one example: a
  batch goes through ``jax.vmap``;
- a parameter has no name of its own: it is named by its key path in the stored tree
  (``jax.tree_util.keystr``: ``.pytree.layers[2].weight``), and the native file
  (``eqx.tree_serialise_leaves``) is the array leaves in that order, one ``.npy`` record each,
  with no names; a tied parameter is stored once, the ``SharedNode`` not at all.
Writes are collected and applied together, by one ``eqx.tree_at``, before the next read: a write
per parameter rebuilding the whole tree made loading a deep net quadratic.
Fast path: ``eqx.partition`` the net once per call, one ``jax.jit`` step over the flat list of its
arrays (``eqx.combine`` inside, ``eqx.apply_updates``), the rate a traced scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from backends._jax_common import (
    CompiledPerSpec,
    JaxPlacement,
    checked_value,
    compiles_build,
    objective,
    target_array,
    to_numpy,
)
from common.core.interface import NOT_STORED, Backend, Model
from common.core.oracle import Loss
from common.core.spec import LayerPath, ModelSpec, split_param_name
from common.core.untrusted import printable
from common.errors import ParamFileError

__all__ = ["EquinoxBackend", "EqxState"]

FILE_CALL = "eqx.tree_serialise_leaves(path, net)"
NPY_VERSIONS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
NPY_HEADER_BUDGET = 4096  # bytes per record beyond its data: np.save pads a header to 64 bytes


def _expanded(net: Any) -> Any:
    """The net as it runs: ``eqx.nn.Shared`` puts the shared layers back in place when called."""
    return net() if isinstance(net, eqx.nn.Shared) else net


def _walk(node: Any, path: LayerPath) -> Any:
    for index in path:
        node = node.layers[index]
    return node


def _apply(net: Any, x: jax.Array) -> jax.Array:
    return jax.vmap(_expanded(net))(x)  # an equinox layer maps one example


def _tie(spec: ModelSpec, net: eqx.nn.Sequential) -> Any:
    """Equinox's sharing mechanism: each tied position becomes a SharedNode in the stored tree and
    is filled with its owner's layer on ``shared()``."""
    users = tuple(slot.path for slot in spec.dense_slots if slot.tied)
    if not users:
        return net
    owners = tuple(slot.owner for slot in spec.dense_slots if slot.tied)
    return eqx.nn.Shared(
        net,
        where=lambda tree: tuple(_walk(tree, path) for path in users),
        get=lambda tree: tuple(_walk(tree, path) for path in owners),
    )


@dataclass(frozen=True)
class Tables:
    """What one version of the stored tree holds, found by walking it once. Rebuilt whenever
    ``model.native`` is replaced; its indices hold across versions, since a write or a step
    changes the arrays, never the tree's structure."""

    net: Any  # the stored tree described (held, so no id below can be reused)
    leaves: list[Any]  # every leaf in flatten order: arrays, SharedNodes, functions
    arrays: list[int]  # the leaf indices of the parameter arrays, in order
    names: dict[int, str]  # leaf index -> key path (jax.tree_util.keystr), for the arrays
    index: dict[int, int]  # id(array) -> its first leaf index
    layers: dict[LayerPath, Any]  # position -> the layer object there once ``shared()`` ran

    @classmethod
    def of(cls, spec: ModelSpec, net: Any) -> Tables:
        flat = jax.tree_util.tree_flatten_with_path(net)[0]
        leaves = [leaf for _, leaf in flat]
        arrays = [i for i, leaf in enumerate(leaves) if eqx.is_array(leaf)]
        index: dict[int, int] = {}
        for i in arrays:
            index.setdefault(id(leaves[i]), i)
        expanded = _expanded(net)
        return cls(
            net=net,
            leaves=leaves,
            arrays=arrays,
            names={i: jax.tree_util.keystr(flat[i][0]) for i in arrays},
            index=index,
            layers={path: _walk(expanded, path) for path, _ in spec.walk()},
        )

    def array_values(self) -> list[jax.Array]:
        return [self.leaves[i] for i in self.arrays]


@dataclass
class EqxState:
    """This adapter's part of a model: writes not yet in the tree, and the tables of its last
    version."""

    pending: dict[int, jax.Array] = field(default_factory=dict)  # leaf index -> value written
    tables: Tables | None = None


def _state(model: Model) -> EqxState:
    return model.adapter_state


class EquinoxBackend(JaxPlacement, Backend):
    name = "equinox"
    lazy_mechanism = (
        "none: eqx.nn.Linear(in_features, out_features, key=...) creates its weight at construction"
    )
    tie_mechanism = (
        "eqx.nn.Shared(net, where, get): a SharedNode at the tied position, filled with the owner's "
        "layer (its very arrays) on net()"
    )
    native_file_suffix = ".eqx"

    def __init__(self) -> None:
        self._seed = 0
        self._key = jax.random.PRNGKey(self._seed)
        self._builds = CompiledPerSpec()

    def framework_version(self) -> str:
        return f"equinox {eqx.__version__} (jax {jax.__version__})"

    def new_adapter_state(self) -> EqxState:
        return EqxState()

    def seed(self, seed: int) -> None:
        self._seed = seed

    # -- building ---------------------------------------------------------------------------------
    def construct(self, spec: ModelSpec, build: Callable[[], Any]) -> Any:
        """Under ``eqx.filter_jit``, once per architecture and seed: eager, every eqx.nn.Linear
        compiles its random init per shape. Each call returns new arrays with the same values; the
        static leaves (SharedNode, where/get, relu) come from the one trace. A deep net is built
        eagerly (see compiles_build)."""

        def traced() -> Any:
            self._key = jax.random.PRNGKey(self._seed)  # every model's default init starts from the seed
            return _tie(spec, build())

        if not compiles_build(spec):
            return traced()
        return self._builds.get((spec, self._seed), lambda: eqx.filter_jit(traced))()

    def new_dense(self, units: int, in_features: int) -> eqx.nn.Linear:
        self._key, key = jax.random.split(self._key)
        return eqx.nn.Linear(in_features, units, key=key)

    def new_relu(self) -> eqx.nn.Lambda:
        return eqx.nn.Lambda(jax.nn.relu)

    def finish_sequential(self, container: Any, children: list[Any]) -> eqx.nn.Sequential:
        return eqx.nn.Sequential(children)

    def child(self, container: eqx.nn.Sequential, index: int) -> Any:
        return container.layers[index]

    def position_root(self, model: Model) -> Any:
        # The tree as it runs: a tied position holds its owner's layer once Shared fills it.
        return _expanded(self.net(model))

    # -- the current tree -------------------------------------------------------------------------
    def net(self, model: Model) -> Any:
        """The stored tree as it is now: pending writes applied, all at once, by ``eqx.tree_at``."""
        state = _state(model)
        if state.pending:
            slots, values = tuple(state.pending), tuple(state.pending.values())

            def where(tree: Any) -> tuple[Any, ...]:
                leaves = jax.tree_util.tree_leaves(tree)
                return tuple(leaves[i] for i in slots)

            model.native = eqx.tree_at(where, model.native, values)
            state.pending = {}
        return model.native

    def _tables(self, model: Model) -> Tables:
        net, state = self.net(model), _state(model)
        if state.tables is None or state.tables.net is not net:
            state.tables = Tables.of(model.spec, net)
        return state.tables

    @staticmethod
    def _param_in(tables: Tables, position: str) -> jax.Array:
        path, role = split_param_name(position)
        layer = tables.layers[path]
        if not isinstance(layer, eqx.nn.Linear):
            kind = type(layer).__qualname__
            raise KeyError(f"{position!r}: the layer at {path} is {kind}, not eqx.nn.Linear")
        return getattr(layer, role)

    # -- shapes and forward -----------------------------------------------------------------------
    def unbuilt_params(self, model: Model) -> dict[str, str]:
        tables = self._tables(model)
        return {tables.names[i]: str(tuple(tables.leaves[i].shape)) for i in tables.arrays}

    def materialize(self, model: Model) -> None:
        """Nothing to do: eqx.nn.Linear built every parameter at construction."""

    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        return to_numpy(_apply(self.net(model), jnp.asarray(x, jnp.float32)))

    # -- parameters by position -------------------------------------------------------------------
    def param_object(self, model: Model, position: str) -> jax.Array:
        model.spec.owner_of(position)  # KeyError naming it unless it is a Dense position
        return self._param_in(self._tables(model), position)

    def describe_param(self, model: Model, param: Any) -> tuple[str, tuple[int, ...], str]:
        tables = self._tables(model)
        return tables.names[tables.index[id(param)]], tuple(param.shape), str(param.dtype)

    def native_value(self, model: Model, position: str) -> np.ndarray:
        return to_numpy(self.param_object(model, position))

    def write_native_value(self, model: Model, position: str, value: np.ndarray) -> None:
        # Located through the tables of any version (their indices hold across versions): the
        # array the position shows there, and the one leaf that holds it.
        state = _state(model)
        tables = self._tables(model) if state.tables is None else state.tables
        old = self._param_in(tables, position)
        state.pending[tables.index[id(old)]] = checked_value(position, value, old.shape).astype(old.dtype)

    def native_value_by_name(self, model: Model, native_name: str) -> np.ndarray:
        tables = self._tables(model)
        by_name = {name: i for i, name in tables.names.items()}
        if native_name not in by_name:
            raise KeyError(f"{native_name!r} is not a parameter path; paths: {', '.join(by_name)}")
        return to_numpy(tables.leaves[by_name[native_name]])

    def stored_grad(self, model: Model, param: Any) -> Any:
        return getattr(param, "grad", NOT_STORED)  # a jax array holds no gradient

    def owners(self, model: Model) -> dict[str, int]:
        """Canonical owner -> its place in ``Tables.arrays``, found by identity."""
        tables = self._tables(model)
        place = {leaf: k for k, leaf in enumerate(tables.arrays)}
        return {name: place[tables.index[id(param)]] for name, param, _ in self.observed_params(model)}

    # -- facts ------------------------------------------------------------------------------------
    def listing(self, model: Model) -> tuple[str, list[str]]:
        tables = self._tables(model)
        return "jax.tree_util.tree_leaves_with_path(eqx.filter(net, eqx.is_array))", [
            tables.names[i] for i in tables.arrays
        ]

    def layer_list(self, model: Model) -> tuple[str, list[Any]]:
        # The stored list: a tied position holds a SharedNode there, not a second layer.
        net = self.net(model)
        if isinstance(net, eqx.nn.Shared):
            return "net.pytree.layers", list(net.pytree.layers)
        return "net.layers", list(net.layers)

    def serializations(self, model: Model) -> dict[str, list[str]]:
        flat = jax.tree_util.tree_flatten_with_path(self.net(model))[0]
        return {
            "jax.tree_util.tree_flatten_with_path(net)": [jax.tree_util.keystr(path) for path, _ in flat],
            f"{FILE_CALL} (array leaves, unnamed, in this order)": self.listing(model)[1],
        }

    # -- gradients and SGD ------------------------------------------------------------------------
    def _loss(self, model: Model, kind: str) -> Callable[[list[jax.Array], jax.Array, Any], jax.Array]:
        """(parameter arrays in leaf order, x, target) -> the loss; pure, for jax.jit. The tree's
        structure and static leaves never change, so they are split off once."""
        params, static = eqx.partition(self.net(model), eqx.is_array)
        treedef = jax.tree_util.tree_structure(params)

        def loss(arrays: list[jax.Array], x: jax.Array, target: Any) -> jax.Array:
            net = eqx.combine(jax.tree_util.tree_unflatten(treedef, arrays), static)
            return objective(_apply(net, x), kind, target)

        return loss

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        # Jitted once per model: eager autodiff re-runs Python for every layer on every call.
        grad = self.compiled(
            model, ("grad", loss.kind), lambda: jax.jit(jax.grad(self._loss(model, loss.kind)))
        )
        # A shared parameter is one array, so jax already summed the gradient over its uses.
        grads = grad(self._tables(model).array_values(), jnp.asarray(x), target_array(loss))
        return {owner: to_numpy(grads[k]) for owner, k in self.owners(model).items()}

    def _sgd(self, model: Model, kind: str) -> Callable[..., Any]:
        loss = self._loss(model, kind)

        def step(arrays: list[jax.Array], lr: jax.Array, x: jax.Array, target: Any, watch: bool) -> Any:
            self.note_trace(model)  # Python runs here once per trace
            value, grads = jax.value_and_grad(loss)(arrays, x, target)
            arrays = eqx.apply_updates(arrays, [-lr * g for g in grads])
            if not watch:
                return arrays, value
            # The loss and every gradient in one buffer a step, rather than one per value: every
            # output of a jitted call costs dispatch time, which is most of a step at this size.
            return arrays, jnp.concatenate([value[None], *(g.ravel() for g in grads)])

        return jax.jit(step, static_argnames="watch")

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        step = self.compiled(model, ("sgd", loss.kind), lambda: self._sgd(model, loss.kind))
        tables = self._tables(model)
        arrays, rate = tables.array_values(), jnp.asarray(lr, jnp.float32)  # rate: traced, never static
        inputs, target, records = jnp.asarray(x), target_array(loss), []
        for _ in range(steps):
            arrays, record = step(arrays, rate, inputs, target, watch=watch)
            records.append(record)  # device arrays until the last step
        params, static = eqx.partition(tables.net, eqx.is_array)
        treedef = jax.tree_util.tree_structure(params)
        model.native = eqx.combine(jax.tree_util.tree_unflatten(treedef, arrays), static)
        flat = np.stack([np.asarray(r) for r in records]).reshape(steps, -1)
        values = flat[:, 0].astype(np.float64)
        if not watch:
            return values, {}
        shapes = [tuple(tables.leaves[i].shape) for i in tables.arrays]
        starts = np.cumsum([1] + [int(np.prod(shape)) for shape in shapes])
        return values, {
            owner: flat[:, starts[k] : starts[k + 1]].reshape(steps, *shapes[k])
            for owner, k in self.owners(model).items()
        }

    # -- files ------------------------------------------------------------------------------------
    def write_native_file(self, model: Model, file: str) -> str:
        eqx.tree_serialise_leaves(file, self.net(model))
        return FILE_CALL

    def native_file_keys(self, model: Model) -> dict[str, str]:
        # The file holds each array leaf once, in order, under no name: named here by key path.
        tables = self._tables(model)
        return {tables.names[tables.arrays[k]]: owner for owner, k in self.owners(model).items()}

    def native_file_budget(self, model: Model) -> int:
        # Exactly the arrays this model stores, each with room for its .npy header.
        return sum(leaf.nbytes + NPY_HEADER_BUDGET for leaf in self._tables(model).array_values())

    def read_native_file_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        """``eqx.tree_deserialise_leaves`` into this model's tree, each array leaf read by
        ``_leaf_reader``: float32 of the leaf's shape, checked from the .npy header before any
        data is read or cast (equinox's default reader would cast float64 to float32). Nothing
        from the file runs: the header is a literal, and object arrays are refused unread."""
        net, expected = self.net(model), self._tables(model)
        names = [expected.names[i] for i in expected.arrays]
        with open(file, "rb") as handle:
            try:
                loaded = eqx.tree_deserialise_leaves(handle, net, filter_spec=_leaf_reader(names))
            except Exception as error:
                raise ParamFileError(_cause(error)) from None
            if handle.read(1):
                raise ParamFileError("bytes after the last parameter of this model")
        tables = Tables.of(model.spec, loaded)
        return [(tables.names[i], np.asarray(tables.leaves[i])) for i in tables.arrays]


class _Refused(ValueError):
    """A leaf the file holds is not what this model stores there."""


def _cause(error: BaseException) -> str:
    """tree_deserialise_leaves wraps a leaf's error in one naming the leaf's key path: keep ours."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, _Refused):
        cause = cause.__cause__
    return printable(cause or f"{type(error).__name__}: {error}")


def _leaf_reader(names: list[str]) -> Callable[[Any, Any], Any]:
    """A filter_spec for ``eqx.tree_deserialise_leaves``: one .npy record per array leaf, as
    ``eqx.default_deserialise_filter_spec`` reads it, but refusing anything other than a C-ordered
    float32 array of the leaf's shape before its data is read."""
    pending = iter(names)

    def read(file: Any, like: Any) -> Any:
        if not eqx.is_array(like):
            return like  # SharedNode, functions: not in the file
        name = printable(next(pending))
        try:
            version = np.lib.format.read_magic(file)
            read_header = NPY_VERSIONS.get(version)
            if read_header is not None:
                shape, fortran_order, dtype = read_header(file)
        except (ValueError, TypeError) as error:  # a bad magic string, header or descr; a short file
            raise _Refused(f"{name}: not a .npy record: {error}") from None
        if read_header is None:
            raise _Refused(f"{name}: .npy version {version}, but should be one of {sorted(NPY_VERSIONS)}")
        if dtype != np.dtype(np.float32):
            raise _Refused(f"{name}: dtype={dtype}, but should be float32")
        if tuple(shape) != tuple(like.shape):
            raise _Refused(f"{name}: shape={tuple(shape)}, but should be {tuple(like.shape)}")
        if fortran_order:
            raise _Refused(f"{name}: Fortran order, but tree_serialise_leaves writes C order")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = file.read(size)
        if len(data) != size:
            raise _Refused(f"{name}: truncated: {len(data)} of {size} bytes")
        return jnp.asarray(np.frombuffer(data, np.float32).reshape(shape))

    return read
