"""What an adapter implements: ``Adapter``, its framework's primitives and optional hooks, and
the toolbox it may call (the position table, unique parameters by identity, the compiled-step
cache); and the values that cross the interface. What users call is ``Backend``, in
``common.core.interface``, written once on these primitives.

Design requirements:
- only numpy arrays, tuples, strings and small frozen dataclasses cross it;
- canonical names (``layers.2.weight``) and canonical layout (weights ``(out, in)``) everywhere;
- adapters translate; they never decide what is correct (that is ``common.core.oracle`` and the tests);
- a position name reads through the native object at that position, so a tie is observed, not
  assumed from the spec.

Read paths, by name: ``native_value`` (one position, native layout), ``native_value_by_name``
(the framework's own lookup), ``read_native_file_entries`` (the framework's own file reader);
write paths: ``write_native_value`` (one position, in place through the native object) and
``write_native_file`` (the framework's own file, to the name it is given).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from common.core.oracle import Loss
from common.core.spec import (
    ROLES,
    STATE_ROLES,
    LayerPath,
    ModelSpec,
    param_name,
    split_param_name,
)
from common.declarations import Declaration, declaration
from common.errors import UsageError

__all__ = [
    "NATIVE_FACT_KEYS",
    "NOT_STORED",
    "Adapter",
    "GradState",
    "LayerParams",
    "Model",
    "Observed",
    "ParamInfo",
    "WeightLayout",
    "qualname",
]


class WeightLayout:
    OUT_IN = "(out, in)"
    IN_OUT = "(in, out)"


def qualname(obj: object) -> str:
    """How a native object is named in a report: ``torch.nn.parameter.Parameter``."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


# What stored_grad returns for a framework that keeps no gradient on a parameter object.
NOT_STORED = object()


class GradState:
    """What a framework holds on a parameter before any backward pass."""

    NONE = "none"
    ZEROS = "zeros"
    NOT_STORED = "not stored"


@dataclass
class Model:
    """A built model: the spec, the native object, the adapter's own typed state (a dataclass it
    defines in ``new_adapter_state``: Flax linen keeps its variables there, since a linen module
    holds none), and what the machinery keeps per model."""

    spec: ModelSpec
    native: Any
    adapter_state: Any = None
    built: bool = False  # materialized once (ensure_built)
    compiled: dict[Any, Any] = field(default_factory=dict)  # compiled steps and optimizers, by key
    traces: int = 0  # how often a compiled function was traced (note_trace)
    # The position table (position_table): the object at each layer position, and the native
    # object it was read from; read again when the adapter replaces the native object.
    layer_table: dict[LayerPath, Any] = field(default_factory=dict, repr=False)
    layer_table_anchor: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class ParamInfo:
    name: str  # canonical name of the owning position
    native_name: str
    native_shape: tuple[int, ...]
    shape: tuple[int, ...]  # canonical layout
    dtype: str
    native_class: str
    positions: tuple[str, ...]  # every position that uses this very object, observed natively


@dataclass(frozen=True)
class LayerParams:
    path: LayerPath
    weight: np.ndarray  # canonical (out, in)
    bias: np.ndarray
    native_weight: np.ndarray  # the framework's own layout
    native_bias: np.ndarray


# Keys every adapter's native_facts() returns; the diff renders them as rows.
NATIVE_FACT_KEYS = (
    "listing_call",  # str: the framework's own "all parameters" call, as the book writes it
    "listing_names",  # list[str]: the names that call returns, in its order
    "layer_list_call",  # str: the framework's own list of layers, e.g. "net.layers"
    "layer_list_length",  # int: entries in that list (a layer used twice may count twice)
    "unique_layer_objects",  # int: distinct objects in that list, by identity
    "serializations",  # dict[str, list[str]]: serialization/listing call -> entry names
    "tie_identity",  # dict[str, bool]: e.g. {"same layer object": True, "same parameter object": True}
)


# (canonical owner name, the native parameter object, every position observed to use that object)
Observed = tuple[str, Any, list[str]]


class Adapter(abc.ABC):
    """The primitives one framework implements (abstract), its optional hooks, and the toolbox
    an adapter calls. Subclass ``common.core.interface.Backend``, which adds the public API."""

    name: ClassVar[str]  # canonical backend name; must match its declaration
    lazy_mechanism: ClassVar[str]  # how input size is inferred, or why it is not
    tie_mechanism: ClassVar[str]  # how a layer is shared, e.g. "the same module object"
    native_file_suffix: ClassVar[str]  # the framework's own parameter file, e.g. ".pt"

    @functools.cached_property
    def declaration(self) -> Declaration:
        """This backend's backend.toml: its facts are stated there once (the weight layout...)."""
        return declaration(self.name)

    @property
    def weight_layout(self) -> str:
        """WeightLayout.OUT_IN or IN_OUT, as the declaration's [facts] state it."""
        return self.declaration.weight_layout

    # == primitives each adapter implements ======================================================
    @abc.abstractmethod
    def framework_version(self) -> str: ...

    # -- building: build_mlp below walks the spec and calls these ---------------------------------
    @abc.abstractmethod
    def new_dense(self, units: int, in_features: int) -> Any:
        """A Dense layer of the framework's own kind. A lazy framework ignores ``in_features``
        (its declaration says lazy_input_size = true); an eager one needs it."""

    @abc.abstractmethod
    def new_relu(self) -> Any: ...

    @abc.abstractmethod
    def finish_sequential(self, container: Any, children: list[Any]) -> Any:
        """The framework's sequential container holding ``children`` (``container`` is what
        new_sequential returned, or None)."""

    @abc.abstractmethod
    def child(self, container: Any, index: int) -> Any:
        """The layer object the framework holds at ``index`` of a sequential container."""

    def new_sequential(self, spec: ModelSpec, path: LayerPath) -> Any:
        """Optional: create a container before its children (Gluon name scopes, Keras names)."""
        return None

    def children_scope(self, container: Any) -> contextlib.AbstractContextManager:
        """Optional: the context children are created in, e.g. Gluon's ``name_scope()``."""
        return contextlib.nullcontext()

    def share_dense(self, owner: Any, units: int) -> Any:
        """The framework's sharing mechanism: by default the very same layer object."""
        return owner

    def construct(self, spec: ModelSpec, build: Callable[[], Any]) -> Any:
        """Optional: run ``build`` (the builder over new_dense...), which returns the net; a
        framework that creates its parameters eagerly may compile it (NNX under ``nnx.jit``)."""
        return build()

    def finish_model(self, model: Model) -> None:  # noqa: B027 - optional hook
        """Optional: work after the net is built (Gluon's ``initialize()``, Flax's adoption)."""

    def new_adapter_state(self) -> Any:
        """Optional: the adapter's own state for a new model, a small dataclass of its own."""
        return None

    def position_root(self, model: Model) -> Any:
        """Optional: the container whose children are the positions, as the model is now: the
        net itself by default. A framework with immutable models (Equinox), whose every update
        replaces ``model.native``, returns the current tree; the position table follows it."""
        return model.native

    # -- observing --------------------------------------------------------------------------------
    @abc.abstractmethod
    def param_object(self, model: Model, position: str) -> Any:
        """The native parameter object at a position, reached through the layer at that position.
        Two positions are tied exactly when this returns the same object for both."""

    @abc.abstractmethod
    def describe_param(self, model: Model, param: Any) -> tuple[str, tuple[int, ...], str]:
        """(native name as the framework's listing shows it, native shape, dtype name)."""

    @abc.abstractmethod
    def unbuilt_params(self, model: Model) -> dict[str, str]:
        """Before any forward pass: native name -> the shape as the framework shows it then
        (e.g. "(8, -1)", "<UninitializedParameter>"). Empty if it holds no parameters yet."""

    @abc.abstractmethod
    def materialize(self, model: Model) -> None:
        """Make shapes known (one forward pass on zeros) if the framework has not yet; idempotent."""

    @abc.abstractmethod
    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        """net(x) with the framework's own call; ``x`` is already checked: (batch, in_features)."""

    @abc.abstractmethod
    def native_value(self, model: Model, position: str) -> np.ndarray:
        """The value at a position (any position, tied or not), in native layout, as a copy."""

    @abc.abstractmethod
    def write_native_value(self, model: Model, position: str, value: np.ndarray) -> None:
        """Write in place, through the native object at ``position``; value is native layout.
        Raise ValueError on a shape mismatch rather than broadcasting."""

    @abc.abstractmethod
    def native_value_by_name(self, model: Model, native_name: str) -> np.ndarray:
        """The value the framework's own lookup finds under ``native_name``; KeyError if none."""

    @abc.abstractmethod
    def stored_grad(self, model: Model, param: Any) -> Any:
        """What the framework keeps as ``param``'s gradient: NOT_STORED if it keeps none on the
        object, else the stored value (None, or an array-like)."""

    # -- facts for the diff -----------------------------------------------------------------------
    @abc.abstractmethod
    def listing(self, model: Model) -> tuple[str, list[str]]:
        """The framework's own "all parameters" call, as the book writes it, and its names."""

    @abc.abstractmethod
    def layer_list(self, model: Model) -> tuple[str, list[Any]]:
        """The framework's own list of top-level layers (e.g. "net.layers") and its entries."""

    @abc.abstractmethod
    def serializations(self, model: Model) -> dict[str, list[str]]:
        """Serialization or listing call -> the entry names it produces."""

    # -- gradients and training -------------------------------------------------------------------
    @abc.abstractmethod
    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        """Gradients of the loss for every unique parameter, keyed by canonical owner name, in
        native layout. Must not accumulate across calls."""

    @abc.abstractmethod
    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``steps`` steps of the framework's own plain SGD, on its fast path (a compiled step,
        built once per model through ``compiled``). Returns the loss before each step, shape
        (steps,), and with ``watch`` the gradient each step applied, per unique parameter
        (canonical owner name -> (steps, *native shape)); ``{}`` without. Values stay on the
        framework's side until the end, then cross as numpy once."""

    # -- files --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def write_native_file(self, model: Model, file: str) -> str:
        """Write the parameters with the framework's own format to exactly ``file`` (a temporary
        name ending in ``native_file_suffix``: ``save_native_file`` renames it into place); return
        the call as a practitioner writes it."""

    @abc.abstractmethod
    def native_file_keys(self, model: Model) -> dict[str, str]:
        """Entry name in the framework's own file -> the canonical owner it holds (a tie stored
        twice has two keys for one owner). Needs no built parameters."""

    @abc.abstractmethod
    def read_native_file_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        """Every (entry name, value in native layout, in the file's own dtype: no cast) of
        ``file``, in file order, read with the framework's own reader without running code from
        the file. ``file`` opens a regular file already checked and bounded (``native_file_budget``);
        it may be a ``/proc/self/fd`` path, with no suffix. A refusal is a ParamFileError that
        need not name the file: the caller adds it."""

    def native_file_budget(self, model: Model) -> int:
        """Optional: the most bytes a native file of ``model`` can sensibly hold; a larger file is
        refused before the framework reads a byte. By default generous, for any container format:
        1 MiB, plus 64 KiB and twice its float32 bytes per position (tied copies included)."""
        params = model.spec.params
        return 1024 * 1024 + sum(len(p.positions) * (64 * 1024 + 8 * math.prod(p.shape)) for p in params)

    # -- devices: optional --------------------------------------------------------------------------
    device: str = "cpu"  # set by use_device, from PARITY_DEVICE (common.config.selected_device)

    def available_devices(self) -> dict[str, str]:
        """Device -> "" where this adapter and the installed build can use it, else why not."""
        return {"cpu": "", "cuda": "this adapter places models on the CPU only"}

    def param_location(self, model: Model, position: str) -> tuple[str, int]:
        """(device kind, address of the buffer) of the parameter at ``position``: two positions of
        a tie must share one buffer, compared by address, not by value. Declared by the
        ``device_placement`` capability; an adapter without it raises NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} does not report parameter buffers")

    def use_device(self, device: str) -> None:
        """Place every model this adapter builds (and its data) on ``device``, or refuse in one line."""
        why = self.available_devices().get(device, f"unknown device {device!r}")
        if why:
            raise UsageError(f"PARITY_DEVICE={device}: backend {self.name!r} cannot use it: {why}")
        self.device = device

    def seed(self, seed: int) -> None:  # noqa: B027 - optional: a no-op where init is already seeded
        """Seed the framework's own RNG, so default initial values are reproducible."""

    # -- embeddings and transposed ties: declared by the embedding capability -------------------
    def new_embedding(self, vocab: int, dim: int) -> Any:
        """An embedding layer of the framework's own kind: a (vocab, dim) table, looked up by ids."""
        raise self._lacks("embedding")

    def tied_output(self, embedding: Any, units: int) -> Any:
        """A Dense of ``units`` (= vocab) outputs whose weight is ``embedding``'s table, with its
        own bias, through the framework's idiom (the same Parameter, ``Embed.attend``,
        ``ReversibleEmbedding``...): the table applied transposed where kernels are (in, out).
        It never copies values; ``param_object`` of its weight position returns the table."""
        raise self._lacks("embedding")

    # -- state and freezing: declared by the batchnorm and freezing capabilities ------------------
    def new_batchnorm(self, features: int, momentum: float | None, eps: float | None) -> Any:
        """A BatchNorm of the framework's own kind over ``features``. ``momentum`` is canonical
        (the weight of the new batch: translate it) or None, and ``eps`` None: the framework's
        default, which the declaration states as facts."""
        raise self._lacks("batchnorm")

    def share_batchnorm(self, owner: Any) -> Any:
        """The framework's sharing mechanism for a BatchNorm: by default the same layer object."""
        return owner

    def freeze(self, model: Model, path: LayerPath) -> None:
        """Freeze the layer at ``path`` (and so every position tied to it) with the framework's
        own idiom: requires_grad_(False), trainable = False, grad_req = 'null', an optimizer
        filter... Training must leave its parameters bit-identical."""
        raise self._lacks("freezing")

    def state_object(self, model: Model, position: str) -> Any:
        """The native object holding the state at a position (``layers.1.running_mean``),
        reached through the layer at that position: tied positions return the same object."""
        raise self._lacks("batchnorm")

    def describe_state(self, model: Model, state: Any) -> tuple[str, tuple[int, ...], str]:
        """(native name as the framework's state listing shows it, native shape, dtype name)."""
        raise self._lacks("batchnorm")

    def native_state_value(self, model: Model, position: str) -> np.ndarray:
        """The state at a position, as a copy."""
        raise self._lacks("batchnorm")

    def write_native_state_value(self, model: Model, position: str, value: np.ndarray) -> None:
        """Write the state at a position in place; a tied partner must see it."""
        raise self._lacks("batchnorm")

    def native_forward_training(self, model: Model, x: np.ndarray) -> np.ndarray:
        """net(x) in training mode: batch statistics, running statistics updated as the framework
        does in a training forward pass (``native_forward`` is inference mode)."""
        raise self._lacks("batchnorm")

    def state_listing(self, model: Model) -> tuple[str, list[str]]:
        """The framework's own listing of non-trainable state (``net.buffers()``,
        ``batch_stats``...) and its names, native-only entries (num_batches_tracked) included."""
        raise self._lacks("batchnorm")

    def _lacks(self, capability: str) -> NotImplementedError:
        reason = self.declaration.capability(capability).reason
        return NotImplementedError(f"backend {self.name!r} declares no {capability}: {reason}")

    # == the toolbox an adapter calls =============================================================
    def position_table(self, model: Model) -> dict[LayerPath, Any]:
        """The object the framework holds at each layer position, read through ``child`` from
        ``position_root``; read again whenever ``model.native`` is a new object, so it is never
        stale for an immutable model, and read once for a mutable one."""
        if model.layer_table_anchor is not model.native:
            root = self.position_root(model)
            model.layer_table = {path: self.layer_at(root, path) for path, _ in model.spec.walk()}
            model.layer_table_anchor = model.native
        return model.layer_table

    def ensure_built(self, model: Model) -> None:
        """materialize once per model: public calls check a flag, not every parameter, so a call
        on a model of N layers stays O(1) here rather than O(N)."""
        if not model.built:
            self.materialize(model)
            model.built = True

    def dense_layer(self, model: Model, position: str, kind: type | tuple[type, ...]) -> tuple[Any, str]:
        """The layer object at a parameter position (a Dense or a BatchNorm, as built, from the
        position table) and the role; KeyError naming ``position`` if it is no such position or
        the object is not a ``kind``."""
        model.spec.owner_of(position)
        path, role = split_param_name(position)
        layer = self.position_table(model)[path]
        if not isinstance(layer, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise KeyError(f"{position!r}: the layer there is {type(layer).__name__}, not {names}")
        return layer, role

    def layer_at(self, net: Any, path: LayerPath) -> Any:
        node = net
        for index in path:
            node = self.child(node, index)
        return node

    def observed_params(self, model: Model) -> list[Observed]:
        """Unique parameters by object identity, in walk order; the first position names each."""
        seen: dict[int, Observed] = {}
        for slot in model.spec.layer_slots:
            for role in model.spec.roles_at(slot.path):
                position = param_name(slot.path, role)
                param = self.param_object(model, position)
                seen.setdefault(id(param), (position, param, []))[2].append(position)
        return list(seen.values())

    def observed_state(self, model: Model) -> list[Observed]:
        """Unique state by object identity, in walk order; the first position names each."""
        seen: dict[int, Observed] = {}
        for slot in model.spec.norm_slots:
            for role in STATE_ROLES:
                position = param_name(slot.path, role)
                state = self.state_object(model, position)
                seen.setdefault(id(state), (position, state, []))[2].append(position)
        return list(seen.values())

    def batchnorm_layer(self, model: Model, position: str, kind: type) -> tuple[Any, str]:
        """The layer object at a BatchNorm position and the role (``weight``, ``bias``,
        ``running_mean``, ``running_var``); KeyError naming ``position`` otherwise."""
        path, role = split_param_name(position, ROLES + STATE_ROLES)
        layer = self.position_table(model).get(path)
        if not isinstance(layer, kind):
            raise KeyError(f"{position!r}: the layer there is {type(layer).__name__}, not {kind.__name__}")
        return layer, role

    def compiled(self, model: Model, key: Any, make: Callable[[], Any]) -> Any:
        """A compiled step or optimizer, built once per model and key, then reused."""
        if key not in model.compiled:
            model.compiled[key] = make()
        return model.compiled[key]

    @staticmethod
    def note_trace(model: Model) -> None:
        """Call inside a function the framework traces (jit, tf.function): it runs once per trace,
        so the suite can check that steps reuse one compiled function."""
        model.traces += 1

    @staticmethod
    def traces(model: Model) -> int:
        return model.traces
