"""Equinox adapter: ``eqx.nn.Sequential`` of ``eqx.nn.Embedding``, ``eqx.nn.Linear`` and
``eqx.nn.Lambda(jax.nn.relu)``; a tie is ``eqx.nn.Shared`` around the whole net, a layer tie and
an output tied to the embedding alike.

Equinox quirks this adapter is built around:
- a model is an immutable PyTree: a write (``eqx.tree_at``) or an SGD step returns a new tree, so
  every layer and parameter is looked up in the current ``model.native``, never in objects the
  builder saw (the base class's position table goes stale after the first update);
- the same ``eqx.nn.Linear`` at two positions of a PyTree is two copies as soon as anything
  updates it. ``eqx.nn.Shared(net, where, get)`` stores each tied position as a ``SharedNode``
  placeholder, and ``shared()`` puts the owner's layer back there with its very arrays: a tie is
  one jax array at both positions (observed by ``is``), and jax sums its gradient over the uses.
  The two layer objects are not one (``shared()`` rebuilds the PyTree nodes around the arrays);
- an output tied to the embedding is Equinox's own example of ``eqx.nn.Shared``: an
  ``eqx.nn.Linear(dim, vocab)`` whose ``weight`` is a ``SharedNode``, filled with the
  ``eqx.nn.Embedding``'s weight. Both are ``(vocab, dim)`` (a Linear's weight is ``(out, in)``), so
  the Linear holds the very table array, untransposed, and keeps its own bias;
- ``eqx.nn.Linear(in, out, key=...)`` is eager, weight ``(out, in)``, and maps one example: a
  batch goes through ``jax.vmap``;
- a parameter has no name of its own: it is named by its key path in the stored tree
  (``jax.tree_util.keystr``: ``.pytree.layers[2].weight``), and the native file
  (``eqx.tree_serialise_leaves``) is the array leaves in that order, one ``.npy`` record each,
  with no names; a tied parameter is stored once, the ``SharedNode`` not at all.
- ``eqx.nn.BatchNorm`` keeps its running statistics out of the tree, in an ``eqx.nn.State`` made by
  ``eqx.nn.make_with_state`` and threaded through every call (``net(x, state) -> (y, state)``,
  under ``jax.vmap(..., axis_name=...)``); the tree holds only a ``StateIndex`` key. A tied
  BatchNorm is one layer (``eqx.nn.Shared``), so one key and one set of statistics, updated at
  each use in order. ``mode="batch"``, the mode that normalizes by the batch in training (``"ema"``
  normalizes by the updated running average); its inference divides the statistics by
  ``1 - momentum**count`` (a zero-debias), see backend.toml;
- freezing is Equinox's own idiom (its "Freezing parameters" example): a ``filter_spec`` PyTree of
  bools, ``False`` on a frozen layer's arrays, and ``eqx.partition(net, filter_spec)``: only the
  ``True`` part is differentiated and updated.
Writes are collected and applied together, by one ``eqx.tree_at``, before the next read: a write
per parameter rebuilding the whole tree made loading a deep net quadratic.
Fast path: ``eqx.partition`` the net once per model, one ``jax.jit`` step over the flat list of its
trainable arrays and the ``eqx.nn.State`` (``eqx.combine`` inside, ``eqx.apply_updates``), the rate
a traced scalar; the step donates the arrays and state it is given (copies of the model's), so XLA
writes the next ones into their buffers. The frozen arrays are constants of that step, as the
static half of Equinox's freezing example is: passed as arguments they cost 10 to 17 us of a 60 us
step on the BatchNorm model. A write to a frozen array makes the next step compile anew. After the
last step the new tree is unflattened from the stored leaves with the trained arrays in place, not
rebuilt by ``eqx.combine`` and walked again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from backends._jax_common import (
    JaxPlacement,
    checked_value,
    device_array,
    fresh_copies,
    model_input,
    objective,
    target_array,
    to_numpy,
)
from common.core.interface import NOT_STORED, Backend, Model
from common.core.oracle import Loss
from common.core.spec import STATE_ROLES, LayerPath, ModelSpec, split_param_name
from common.core.untrusted import printable
from common.errors import ParamFileError

__all__ = ["EquinoxBackend", "EqxState", "MyLinear"]

FILE_CALL = "eqx.tree_serialise_leaves(path, net)"
STATE_CALL = "eqx.nn.State keys (net, state = eqx.nn.make_with_state(...))"
AXIS = "batch"  # the vmapped batch axis a BatchNorm reduces over (its axis_name)
NPY_VERSIONS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
NPY_HEADER_BUDGET = 4096  # bytes per record beyond its data: np.save pads a header to 64 bytes
# The placeholder eqx.nn.Shared stores at a tied place; its class is not public, so it is read
# off a Shared made through the public API.
SharedNode = type(
    eqx.nn.Shared((jnp.zeros(()), jnp.zeros(())), where=lambda t: t[1], get=lambda t: t[0]).pytree[1]
)


class MyLinear(eqx.Module):
    """D2L 6.5's custom layer in Equinox: a Module whose ``weight`` and ``bias`` are array fields
    (Equinox has no parameter API: a Module's array fields are its parameters). (out, in), as
    eqx.nn.Linear's; maps one example; no ReLU inside (the spec's ReLU is a layer of its own)."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, in_units: int, units: int, *, key: jax.Array) -> None:
        self.weight = jax.random.normal(key, (units, in_units))
        self.bias = jnp.zeros((units,))

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        # eqx.nn.Sequential passes every layer a key (for dropout and the like); this one draws none.
        return self.weight @ x + self.bias


_PARAM_LAYERS = (eqx.nn.Linear, MyLinear, eqx.nn.BatchNorm, eqx.nn.Embedding)


def _expanded(net: Any) -> Any:
    """The net as it runs: ``eqx.nn.Shared`` puts the shared layers back in place when called."""
    return net() if isinstance(net, eqx.nn.Shared) else net


def _walk(node: Any, path: LayerPath) -> Any:
    for index in path:
        node = node.layers[index]
    return node


def _apply(net: Any, x: jax.Array, state: eqx.nn.State | None = None) -> tuple[jax.Array, Any]:
    """(net(x), state after it): an equinox layer maps one example, so a batch goes through
    ``jax.vmap``. With an ``eqx.nn.State`` the batch axis is named, for BatchNorm to reduce over,
    and the state goes in and comes out unbatched (Equinox's stateful example)."""
    net = _expanded(net)
    if state is None:
        return jax.vmap(net)(x), None
    return jax.vmap(net, in_axes=(0, None), out_axes=(0, None), axis_name=AXIS)(x, state)


@dataclass(frozen=True)
class _Where:
    """``where`` of eqx.nn.Shared: the tied layers, then the weights reading the table. A value,
    not a closure, so two nets of one architecture have equal static halves and share their
    compiled programs (_programs)."""

    users: tuple[LayerPath, ...]
    readers: tuple[LayerPath, ...]

    def __call__(self, tree: Any) -> tuple[Any, ...]:
        layers = tuple(_walk(tree, path) for path in self.users)
        return (*layers, *(_walk(tree, path).weight for path in self.readers))


@dataclass(frozen=True)
class _Get:
    """``get`` of eqx.nn.Shared: what fills each of _Where's places, the owner's very layer or
    the embedding's table."""

    owners: tuple[LayerPath, ...]
    table: LayerPath | None
    readers: int

    def __call__(self, tree: Any) -> tuple[Any, ...]:
        layers = tuple(_walk(tree, path) for path in self.owners)
        return (*layers, *(_walk(tree, self.table).weight for _ in range(self.readers)))


def _tie(spec: ModelSpec, net: eqx.nn.Sequential) -> Any:
    """Equinox's sharing mechanism: each tied position (a Linear or a BatchNorm) becomes a
    SharedNode in the stored tree and is filled with its owner's layer on ``shared()``; the weight
    of each Linear reading the embedding's table becomes one, filled with the table."""
    users = tuple(slot.path for slot in spec.layer_slots if slot.tied)
    owners = tuple(slot.owner for slot in spec.layer_slots if slot.tied)
    embed = spec.embed_slot
    readers = () if embed is None else tuple(embed.readers)
    if not users and not readers:
        return net
    table = None if embed is None else embed.path
    return eqx.nn.Shared(net, where=_Where(users, readers), get=_Get(owners, table, len(readers)))


@dataclass(frozen=True)
class Tables:
    """What one version of the stored tree holds, found by walking it once. Rebuilt whenever
    ``model.native`` is replaced; its indices hold across versions, since a write or a step
    changes the arrays, never the tree's structure."""

    spec: ModelSpec
    net: Any  # the stored tree described (held, so no id below can be reused)
    structure: Any  # its tree structure (jax.tree_util)
    leaves: list[Any]  # every leaf in flatten order: arrays, SharedNodes, functions
    arrays: list[int]  # the leaf indices of the parameter arrays, in order
    names: dict[int, str]  # leaf index -> key path (jax.tree_util.keystr), for the arrays
    index: dict[int, int]  # id(array) -> its first leaf index

    @classmethod
    def of(cls, spec: ModelSpec, net: Any) -> Tables:
        flat, structure = jax.tree_util.tree_flatten_with_path(net)
        leaves = [leaf for _, leaf in flat]
        arrays = [i for i, leaf in enumerate(leaves) if eqx.is_array(leaf)]
        return cls(
            spec=spec,
            net=net,
            structure=structure,
            leaves=leaves,
            arrays=arrays,
            names={i: jax.tree_util.keystr(flat[i][0]) for i in arrays},
            index=_first_index(leaves, arrays),
        )

    def with_arrays(self, values: list[jax.Array]) -> Tables:
        """The next version: ``values`` in place of the parameter arrays, in order, all else kept.
        Unflattened from the leaves, with no walk of the tree: after each ``train`` call the walk
        and ``eqx.combine`` took 0.5 ms, next to 10-15 ms for 200 steps (measured here)."""
        leaves = list(self.leaves)
        for i, value in zip(self.arrays, values, strict=True):
            leaves[i] = value
        return Tables(
            spec=self.spec,
            net=jax.tree_util.tree_unflatten(self.structure, leaves),
            structure=self.structure,
            leaves=leaves,
            arrays=self.arrays,
            names=self.names,
            index=_first_index(leaves, self.arrays),
        )

    @cached_property
    def layers(self) -> dict[LayerPath, Any]:
        """Position -> the layer object there once ``shared()`` ran; found when first asked."""
        expanded = _expanded(self.net)
        return {path: _walk(expanded, path) for path, _ in self.spec.walk()}

    def array_values(self) -> list[jax.Array]:
        return [self.leaves[i] for i in self.arrays]


def _first_index(leaves: list[Any], arrays: list[int]) -> dict[int, int]:
    index: dict[int, int] = {}
    for i in arrays:
        index.setdefault(id(leaves[i]), i)
    return index


@dataclass(frozen=True)
class Split:
    """The net split as Equinox's freezing example splits it, ``eqx.partition(net, filter_spec)``,
    then its frozen part into arrays and the static rest: flat lists of arrays for ``jax.jit``.
    Found once per model: a write or a step changes the arrays, never the split."""

    trainable: tuple[int, ...]  # places in Tables.arrays of the arrays differentiated and updated
    frozen: tuple[int, ...]  # places of the frozen arrays: passed in, never updated
    trainable_def: Any  # the tree structures of the two parts
    frozen_def: Any
    static: Any  # everything but arrays: SharedNode, functions, BatchNorm's flags and StateIndex
    architecture: Any  # equal for two nets one program serves (_architecture); None: not hashable

    @classmethod
    def of(cls, tables: Tables, filter_spec: Any) -> Split:
        if filter_spec is None:  # nothing frozen: every array is trained
            filter_spec, trainable = eqx.is_array, tuple(range(len(tables.arrays)))
        else:  # a PyTree of bools shaped like the net, True where trained
            mask = jax.tree_util.tree_leaves(filter_spec)
            trainable = tuple(k for k, i in enumerate(tables.arrays) if mask[i])
        diff, rest = eqx.partition(tables.net, filter_spec)
        frozen, static = eqx.partition(rest, eqx.is_array)
        chosen = set(trainable)
        return cls(
            trainable=trainable,
            frozen=tuple(k for k in range(len(tables.arrays)) if k not in chosen),
            trainable_def=jax.tree_util.tree_structure(diff),
            frozen_def=jax.tree_util.tree_structure(frozen),
            static=static,
            architecture=_architecture(diff, frozen, static),
        )

    def parts(self, tables: Tables) -> tuple[list[jax.Array], list[jax.Array]]:
        arrays = tables.array_values()
        return [arrays[k] for k in self.trainable], [arrays[k] for k in self.frozen]

    def arrays(self, trainable: list[jax.Array], frozen: list[jax.Array]) -> list[jax.Array]:
        """The two parts back in Tables.arrays order: parts' inverse."""
        arrays: list[Any] = [None] * (len(self.trainable) + len(self.frozen))
        for places, values in ((self.trainable, trainable), (self.frozen, frozen)):
            for k, value in zip(places, values, strict=True):
                arrays[k] = value
        return arrays

    def net(self, trainable: list[jax.Array], frozen: list[jax.Array]) -> Any:
        """``eqx.combine`` of the parts: the stored tree with these arrays."""
        unflatten = jax.tree_util.tree_unflatten
        return eqx.combine(
            unflatten(self.trainable_def, trainable), unflatten(self.frozen_def, frozen), self.static
        )


def _architecture(trainable: Any, frozen: Any, static: Any) -> Any:
    """What a compiled program of the split depends on: the structures of its parts and the static
    leaves, each ``SharedNode`` placeholder (compared by identity, a new one per net) as one
    mark. Two nets with an equal key run the same program; None when a static leaf cannot be
    hashed (the program is then the net's own)."""
    leaves, structure = jax.tree_util.tree_flatten(static)
    marks = tuple(SharedNode if isinstance(leaf, SharedNode) else leaf for leaf in leaves)
    key = (jax.tree_util.tree_structure(trainable), jax.tree_util.tree_structure(frozen), structure, marks)
    try:
        hash(key)
    except TypeError:
        return None
    return key


# Compiled programs shared by every net of one architecture: the suite builds the book's models
# hundreds of times, and a program per net traced and compiled each of them anew. Bounded, so
# a campaign over random architectures does not keep every one.
_PROGRAMS: OrderedDict[Any, Callable[..., Any]] = OrderedDict()
MAX_PROGRAMS = 256
_tracing = threading.local()  # the model a shared program is traced for (note_trace)


def _shared(key: Any, make: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
    if key is None or key[0] is None:
        return make()
    program = _PROGRAMS.get(key)
    if program is None:
        program = _PROGRAMS[key] = make()
        if len(_PROGRAMS) > MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(key)
    return program


@dataclass
class EqxState:
    """This adapter's part of a model: writes not yet in the tree, the tables of its last version,
    the BatchNorm statistics (``eqx.nn.State``, None without a BatchNorm), and the freezing
    ``filter_spec`` (None: nothing frozen) with the split it makes."""

    pending: dict[int, jax.Array] = field(default_factory=dict)  # leaf index -> value written
    tables: Tables | None = None
    state: eqx.nn.State | None = None
    filter_spec: Any = None
    split: Split | None = None
    # (loss kind, watch) -> (the frozen arrays it holds as constants, the compiled step)
    sgd_steps: dict[tuple[str, bool], tuple[tuple[jax.Array, ...], Callable[..., Any]]] = field(
        default_factory=dict
    )


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

    def framework_version(self) -> str:
        return f"equinox {eqx.__version__} (jax {jax.__version__})"

    def new_adapter_state(self) -> EqxState:
        return EqxState()

    def seed(self, seed: int) -> None:
        self._seed = seed

    # -- building ---------------------------------------------------------------------------------
    def construct(self, spec: ModelSpec, build: Callable[[], Any]) -> Any:
        """Eager: each random init runs op by op, and JAX caches those ops per shape, so a suite
        that builds hundreds of small models compiles almost nothing. Compiling each build under
        ``eqx.filter_jit`` cost a whole XLA compile per architecture (36 builds of the six named
        models: 5.3 s of CPU compiled against 0.9 s eager, and several times that with a cold
        compilation cache, as in a fresh clone)."""
        self._key = jax.random.PRNGKey(self._seed)  # every model's default init starts from the seed
        return _tie(spec, build())

    def new_dense(self, units: int, in_features: int) -> eqx.nn.Linear:
        self._key, key = jax.random.split(self._key)
        return eqx.nn.Linear(in_features, units, key=key)

    def new_custom_dense(self, units: int, in_features: int) -> MyLinear:
        self._key, key = jax.random.split(self._key)
        return MyLinear(in_features, units, key=key)

    def new_relu(self) -> eqx.nn.Lambda:
        return eqx.nn.Lambda(jax.nn.relu)

    def new_embedding(self, vocab: int, dim: int) -> eqx.nn.Embedding:
        self._key, key = jax.random.split(self._key)
        return eqx.nn.Embedding(vocab, dim, key=key)

    def tied_output(self, embedding: eqx.nn.Embedding, units: int) -> eqx.nn.Linear:
        # Its own weight is a placeholder, as in Equinox's example: _tie makes it a SharedNode,
        # filled with the embedding's very weight whenever the net runs.
        self._key, key = jax.random.split(self._key)
        return eqx.nn.Linear(embedding.embedding_size, units, key=key)

    def new_batchnorm(self, features: int, momentum: float | None, eps: float | None) -> eqx.nn.BatchNorm:
        # Equinox's momentum is the weight of the running value: 1 - the canonical one. mode="batch"
        # normalizes by the batch in training, as the oracle does ("ema" by the updated average).
        settings = {"momentum": None if momentum is None else 1.0 - momentum, "eps": eps}
        chosen = {key: value for key, value in settings.items() if value is not None}
        return eqx.nn.BatchNorm(features, axis_name=AXIS, mode="batch", **chosen)

    def finish_model(self, model: Model) -> None:
        """A net with a BatchNorm is split by ``eqx.nn.make_with_state`` into the tree (holding a
        StateIndex key) and the ``eqx.nn.State`` of its running statistics, kept beside it."""
        if model.spec.has_batchnorm:
            state = _state(model)
            model.native, state.state = eqx.nn.make_with_state(lambda: model.native)()
            state.tables = None  # the StateIndex leaves changed (initial values out): new indices

    def freeze(self, model: Model, path: LayerPath) -> None:
        """Equinox's idiom (its "Freezing parameters" example): a ``filter_spec`` of the net's shape,
        ``False`` at this layer's arrays; training differentiates and updates only what
        ``eqx.partition(net, filter_spec)`` keeps. A tied layer is stored once, at ``path``."""
        state, net = _state(model), self.net(model)
        spec = jax.tree_util.tree_map(eqx.is_array, net) if state.filter_spec is None else state.filter_spec

        roles = model.spec.roles_at(path)  # an embedding has its weight only

        def arrays(tree: Any) -> tuple[Any, ...]:
            layer = _walk(tree.pytree if isinstance(tree, eqx.nn.Shared) else tree, path)
            return tuple(getattr(layer, role) for role in roles)

        state.filter_spec = eqx.tree_at(arrays, spec, replace=(False,) * len(roles))
        state.split = None
        model.compiled.clear()  # compiled over the previous split

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

    def _split(self, model: Model) -> Split:
        state = _state(model)
        if state.split is None:
            state.split = Split.of(self._tables(model), state.filter_spec)
        return state.split

    @staticmethod
    def _param_in(tables: Tables, position: str) -> jax.Array:
        path, role = split_param_name(position)
        layer = tables.layers[path]
        if not isinstance(layer, _PARAM_LAYERS):
            kind = type(layer).__qualname__
            raise KeyError(
                f"{position!r}: the layer at {path} is {kind}, "
                "not eqx.nn.Linear, MyLinear, BatchNorm or Embedding"
            )
        return getattr(layer, role)

    # -- shapes and forward -----------------------------------------------------------------------
    def unbuilt_params(self, model: Model) -> dict[str, str]:
        tables = self._tables(model)
        return {tables.names[i]: str(tuple(tables.leaves[i].shape)) for i in tables.arrays}

    def materialize(self, model: Model) -> None:
        """Nothing to do: eqx.nn.Linear built every parameter at construction."""

    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        """Inference mode: ``eqx.nn.inference_mode`` sets every BatchNorm's ``inference`` flag, so
        it normalizes by its running statistics and leaves the state as it was."""
        run = self._compiled(model, "inference", lambda split: jax.jit(self._program(split, inference=True)))
        trainable, frozen = self._split(model).parts(self._tables(model))
        return to_numpy(run(trainable, frozen, _state(model).state, model_input(model.spec, x))[0])

    def native_forward_training(self, model: Model, x: np.ndarray) -> np.ndarray:
        """Training mode (every BatchNorm's ``inference`` is False, as built): normalized by the
        batch, and the new ``eqx.nn.State`` kept."""
        run = self._compiled(model, "forward", lambda split: jax.jit(self._program(split)))
        trainable, frozen = self._split(model).parts(self._tables(model))
        y, _state(model).state = run(trainable, frozen, _state(model).state, model_input(model.spec, x))
        return to_numpy(y)

    # -- parameters by position -------------------------------------------------------------------
    def param_object(self, model: Model, position: str) -> jax.Array:
        model.spec.owner_of(position)  # KeyError naming it unless it is a parameter position
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

    # -- state: BatchNorm's running statistics live in the eqx.nn.State ---------------------------
    def _statistics(self, model: Model, position: str) -> tuple[eqx.nn.BatchNorm, int]:
        """The BatchNorm at a state position and which of its (mean, var) pair the role names."""
        layer, role = self.batchnorm_layer(model, position, eqx.nn.BatchNorm)
        return layer, STATE_ROLES.index(role)

    def state_object(self, model: Model, position: str) -> jax.Array:
        # Looked up by the layer's StateIndex: a tied BatchNorm is one layer, so one key and one array.
        layer, which = self._statistics(model, position)
        return _state(model).state.get(layer.batch_state_index)[which]

    def describe_state(self, model: Model, state: Any) -> tuple[str, tuple[int, ...], str]:
        names = {id(array): name for name, array in _state_entries(_state(model).state)}
        return names[id(state)], tuple(state.shape), str(state.dtype)

    def native_state_value(self, model: Model, position: str) -> np.ndarray:
        return to_numpy(self.state_object(model, position))

    def write_native_state_value(self, model: Model, position: str, value: np.ndarray) -> None:
        # eqx.nn.State.set returns a new State (and retires the old one); the step counter stays.
        layer, which = self._statistics(model, position)
        state = _state(model)
        pair = list(state.state.get(layer.batch_state_index))
        pair[which] = checked_value(position, value, pair[which].shape).astype(pair[which].dtype)
        state.state = state.state.set(layer.batch_state_index, tuple(pair))

    def state_listing(self, model: Model) -> tuple[str, list[str]]:
        # The (mean, var) pair of each BatchNorm, and its step counter: Equinox's own, native-only.
        state = _state(model).state
        return STATE_CALL, [] if state is None else [name for name, _ in _state_entries(state)]

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
    def _compiled(
        self, model: Model, name: Any, make: Callable[[Split], Callable[..., Any]]
    ) -> Callable[..., Any]:
        """The compiled program ``name`` for this model, shared with every model of its
        architecture (``make`` builds it from the split; it must hold nothing of the model)."""
        split = self._split(model)
        _tracing.model = model  # a shared program may trace again (a new batch size): count it here
        return self.compiled(model, name, lambda: _shared((split.architecture, name), lambda: make(split)))

    @staticmethod
    def _program(split: Split, inference: bool = False) -> Callable[..., tuple[jax.Array, Any]]:
        """(trainable arrays, frozen arrays, state, x) -> (net(x), state after it), in training
        mode or in inference mode; pure, for jax.jit."""

        def run(trainable: list[jax.Array], frozen: list[jax.Array], state: Any, x: jax.Array) -> Any:
            net = split.net(trainable, frozen)
            if inference and state is not None:
                net = eqx.nn.inference_mode(net)
            return _apply(net, x, state)

        return run

    @staticmethod
    def _objective(split: Split, kind: str) -> Callable[..., tuple[jax.Array, Any]]:
        """(trainable, frozen, state, x, target) -> (loss, state after the pass): differentiated in
        its first argument only, so frozen arrays get no gradient."""
        run = EquinoxBackend._program(split)

        def loss(
            trainable: list[jax.Array], frozen: list[jax.Array], state: Any, x: jax.Array, target: Any
        ) -> Any:
            y, state = run(trainable, frozen, state, x)
            return objective(y, kind, target), state

        return loss

    def _trained_owners(self, model: Model) -> dict[str, int]:
        """Canonical owner -> its place in the split's trainable list; frozen owners are absent."""
        place = {k: j for j, k in enumerate(self._split(model).trainable)}
        return {owner: place[k] for owner, k in self.owners(model).items() if k in place}

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        grad = self._compiled(
            model,
            ("grad", loss.kind),
            lambda split: jax.jit(jax.grad(self._objective(split, loss.kind), has_aux=True)),
        )
        trainable, frozen = self._split(model).parts(self._tables(model))
        state = _state(model)
        # A shared parameter is one array, so jax already summed the gradient over its uses.
        inputs = model_input(model.spec, x)
        grads, state.state = grad(trainable, frozen, state.state, inputs, target_array(loss))
        return {owner: to_numpy(grads[j]) for owner, j in self._trained_owners(model).items()}

    def _sgd(self, split: Split, kind: str, frozen: tuple[jax.Array, ...], watch: bool) -> Callable[..., Any]:
        """One program per ``watch``: a keyword argument is slower to dispatch than none. It
        donates the trainable arrays and the state it is given (native_train passes copies), so
        XLA writes the new ones into their buffers: on the BatchNorm model a step allocating
        fresh ones took 1.3 to 1.6 times as long (measured here, 200 steps alternating)."""
        loss = self._objective(split, kind)
        frozen_list = list(frozen)

        def step(trainable: list[jax.Array], state: Any, lr: jax.Array, x: jax.Array, target: Any) -> Any:
            self.note_trace(_tracing.model)  # Python runs here once per trace
            (value, state), grads = jax.value_and_grad(loss, has_aux=True)(
                trainable, frozen_list, state, x, target
            )
            trainable = eqx.apply_updates(trainable, [-lr * g for g in grads])
            if not watch:
                return trainable, state, value
            # The loss and every gradient in one buffer a step, rather than one per value: every
            # output of a jitted call costs dispatch time, which is most of a step at this size.
            return trainable, state, jnp.concatenate([value[None], *(g.ravel() for g in grads)])

        return jax.jit(step, donate_argnums=(0, 1))

    def _sgd_step(self, model: Model, kind: str, frozen: list[jax.Array], watch: bool) -> Callable[..., Any]:
        """The compiled step for ``kind``: shared by the architecture when nothing is frozen;
        else the model's own, with these very frozen arrays as constants, reused until a write
        replaces one of them."""
        if not frozen:
            key = ("sgd", kind, watch)
            return self._compiled(model, key, lambda split: self._sgd(split, kind, (), watch))
        _tracing.model = model
        steps = _state(model).sgd_steps
        held = steps.get((kind, watch))
        stale = held is None or len(held[0]) != len(frozen)
        if stale or any(a is not b for a, b in zip(held[0], frozen, strict=True)):
            program = self._sgd(self._split(model), kind, tuple(frozen), watch)
            held = steps[kind, watch] = (tuple(frozen), program)
        return held[1]

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        tables, split, adapter_state = self._tables(model), self._split(model), _state(model)
        (trainable, frozen), state = split.parts(tables), adapter_state.state
        step = self._sgd_step(model, loss.kind, frozen, watch)
        rate = device_array("rate", lr, np.float32)  # traced, never static
        inputs, target, records = model_input(model.spec, x), target_array(loss), []
        trainable, state = fresh_copies((trainable, state))  # the step donates what it is given
        for _ in range(steps):
            trainable, state, record = step(trainable, state, rate, inputs, target)
            records.append(record)  # device arrays until the last step
        # Frozen arrays go back as they came: the very same arrays, bit for bit.
        tables = adapter_state.tables = tables.with_arrays(split.arrays(trainable, frozen))
        model.native, adapter_state.state = tables.net, state
        flat = np.stack([np.asarray(r) for r in records]).reshape(steps, -1)
        values = flat[:, 0].astype(np.float64)
        if not watch:
            return values, {}
        shapes = [tuple(tables.leaves[tables.arrays[k]].shape) for k in split.trainable]
        starts = np.cumsum([1] + [int(np.prod(shape)) for shape in shapes])
        return values, {
            owner: flat[:, starts[j] : starts[j + 1]].reshape(steps, *shapes[j])
            for owner, j in self._trained_owners(model).items()
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
        # Exactly the records this model stores (arrays, and a BatchNorm's bool flag), each with
        # room for its .npy header.
        stored = [leaf for leaf in jax.tree_util.tree_leaves(self.net(model)) if eqx.is_array_like(leaf)]
        return sum(np.asarray(leaf).nbytes + NPY_HEADER_BUDGET for leaf in stored)

    def read_native_file_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        """``eqx.tree_deserialise_leaves`` into this model's tree, each array leaf read by
        ``_leaf_reader``: float32 of the leaf's shape, checked from the .npy header before any
        data is read or cast (equinox's default reader would cast float64 to float32). Nothing
        from the file runs: the header is a literal, and object arrays are refused unread. A
        BatchNorm's ``inference`` flag is a leaf too, which the file holds as a bool record."""
        net = self.net(model)
        names = [
            jax.tree_util.keystr(path)
            for path, leaf in jax.tree_util.tree_flatten_with_path(net)[0]
            if eqx.is_array_like(leaf)  # what tree_serialise_leaves writes a record for
        ]
        with open(file, "rb") as handle:
            try:
                loaded = eqx.tree_deserialise_leaves(handle, net, filter_spec=_leaf_reader(names))
            except Exception as error:
                raise ParamFileError(_cause(error)) from None
            if handle.read(1):
                raise ParamFileError("bytes after the last parameter of this model")
        tables = Tables.of(model.spec, loaded)
        return [(tables.names[i], np.asarray(tables.leaves[i])) for i in tables.arrays]


def _state_entries(state: eqx.nn.State) -> list[tuple[str, jax.Array]]:
    """Every array of an ``eqx.nn.State`` under a name: its StateIndex key (the layer's key path,
    as ``eqx.nn.make_with_state`` writes it), with ``[0]``/``[1]`` for a BatchNorm's mean and var."""
    values, keys = state.tree_flatten()
    entries = []
    for key, value in zip(keys, values, strict=True):
        if isinstance(value, tuple):
            entries.extend((f"{key}[{j}]", array) for j, array in enumerate(value))
        else:
            entries.append((str(key), value))
    return entries


class _Refused(ValueError):
    """A leaf the file holds is not what this model stores there."""


def _cause(error: BaseException) -> str:
    """tree_deserialise_leaves wraps a leaf's error in one naming the leaf's key path: keep ours."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, _Refused):
        cause = cause.__cause__
    return printable(cause or f"{type(error).__name__}: {error}")


def _leaf_reader(names: list[str]) -> Callable[[Any, Any], Any]:
    """A filter_spec for ``eqx.tree_deserialise_leaves``: one .npy record per array-like leaf, as
    ``eqx.default_deserialise_filter_spec`` reads it, but refusing anything other than a C-ordered
    float32 array of the leaf's shape before its data is read (or, for a flag such as a
    BatchNorm's ``inference``, a scalar of the flag's own dtype)."""
    pending = iter(names)

    def read(file: Any, like: Any) -> Any:
        if not eqx.is_array_like(like):
            return like  # SharedNode, functions, axis names: not in the file
        name = printable(next(pending))
        flag = not eqx.is_array(like)
        wanted = np.asarray(like).dtype if flag else np.dtype(np.float32)
        try:
            version = np.lib.format.read_magic(file)
            read_header = NPY_VERSIONS.get(version)
            if read_header is not None:
                shape, fortran_order, dtype = read_header(file)
        except (ValueError, TypeError) as error:  # a bad magic string, header or descr; a short file
            raise _Refused(f"{name}: not a .npy record: {error}") from None
        if read_header is None:
            raise _Refused(f"{name}: .npy version {version}, but should be one of {sorted(NPY_VERSIONS)}")
        if dtype != wanted:
            raise _Refused(f"{name}: dtype={dtype}, but should be {wanted}")
        if tuple(shape) != tuple(np.shape(like)):
            raise _Refused(f"{name}: shape={tuple(shape)}, but should be {tuple(np.shape(like))}")
        if fortran_order:
            raise _Refused(f"{name}: Fortran order, but tree_serialise_leaves writes C order")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = file.read(size)
        if len(data) != size:
            raise _Refused(f"{name}: truncated: {len(data)} of {size} bytes")
        if flag:
            return like  # a setting, not a parameter: the model keeps its own
        return jnp.asarray(np.frombuffer(data, np.float32).reshape(shape))

    return read
