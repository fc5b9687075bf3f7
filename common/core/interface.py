"""The framework-neutral interface every backend adapter implements.

Design requirements:
- only numpy arrays, tuples, strings and small frozen dataclasses cross it;
- canonical names (``layers.2.weight``) and canonical layout (weights ``(out, in)``) everywhere;
- adapters translate; they never decide what is correct (that is ``common.core.oracle`` and the tests);
- a position name reads through the native object at that position, so a tie is observed, not
  assumed from the spec.

An adapter implements its framework's primitives (make a Dense, find the parameter object at a
position, run N steps of its own SGD...); ``Backend`` builds everything else on them once: the
recursive builder, unique parameters by object identity, the tie-identity facts, the fresh-twin
grad state, the native-file entry checks, the compiled-step cache, validation and layout.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from common.core.oracle import Loss, check_input
from common.core.params import check_value, check_values
from common.core.spec import (
    ROLES,
    Block,
    Dense,
    Layer,
    LayerPath,
    ModelSpec,
    param_name,
    spec_from_dict,
    split_param_name,
)
from common.declarations import Declaration, declaration
from common.errors import ParamFileError, UsageError

__all__ = [
    "NATIVE_FACT_KEYS",
    "NOT_STORED",
    "Backend",
    "GradState",
    "LayerParams",
    "Model",
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


class Backend(abc.ABC):
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
    def read_native(self, model: Model, position: str) -> np.ndarray:
        """The value at a position (any position, tied or not), in native layout, as a copy."""

    @abc.abstractmethod
    def write_native(self, model: Model, position: str, value: np.ndarray) -> None:
        """Write in place, through the native object at ``position``; value is native layout.
        Raise ValueError on a shape mismatch rather than broadcasting."""

    @abc.abstractmethod
    def read_by_native_name(self, model: Model, native_name: str) -> np.ndarray:
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
    def save_native_file(self, model: Model, path: str) -> str:
        """Save with the framework's own format to ``path + native_file_suffix``; return the call."""

    @abc.abstractmethod
    def native_file_keys(self, model: Model) -> dict[str, str]:
        """Entry name in the framework's own file -> the canonical owner it holds (a tie stored
        twice has two keys for one owner). Needs no built parameters."""

    @abc.abstractmethod
    def read_native_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        """Every (entry name, value in native layout) of ``file``, in file order, read with the
        framework's own reader without running code from the file."""

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

    # == machinery written once ==================================================================
    def build_mlp(self, spec: ModelSpec | Mapping[str, Any]) -> Model:
        """Walk the spec (or spec data, validated here before any adapter call): a Block becomes
        a nested sequential, a tied position gets ``share_dense(owner)``. The position table is
        then read back through ``child``, so it holds what the framework really holds."""
        if not isinstance(spec, ModelSpec):
            spec = spec_from_dict(spec)
        owners = {slot.path: slot.owner for slot in spec.dense_slots}
        widths = {slot.path: slot.in_features for slot in spec.dense_slots}
        made: dict[LayerPath, Any] = {}

        def build(layers: tuple[Layer, ...], prefix: LayerPath) -> Any:
            container = self.new_sequential(spec, prefix)
            children = []
            with self.children_scope(container):
                for index, layer in enumerate(layers):
                    path = prefix + (index,)
                    if isinstance(layer, Block):
                        children.append(build(layer.layers, path))
                    elif isinstance(layer, Dense):
                        owner = owners[path]  # owners come first in walk order
                        made[path] = (
                            self.new_dense(layer.units, widths[path])
                            if owner == path
                            else self.share_dense(made[owner], layer.units)
                        )
                        children.append(made[path])
                    else:
                        children.append(self.new_relu())
            return self.finish_sequential(container, children)

        net = self.construct(spec, lambda: build(spec.layers, ()))
        model = Model(spec, net, adapter_state=self.new_adapter_state())
        self.position_table(model)
        self.finish_model(model)
        return model

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

    def dense_layer(self, model: Model, position: str, kind: type) -> tuple[Any, str]:
        """The layer object at a Dense position (as built, from the position table) and the role;
        KeyError naming ``position`` if it is no Dense position or the object is not a ``kind``."""
        model.spec.owner_of(position)
        path, role = split_param_name(position)
        layer = self.position_table(model)[path]
        if not isinstance(layer, kind):
            raise KeyError(f"{position!r}: the layer there is {type(layer).__name__}, not {kind.__name__}")
        return layer, role

    def versions(self) -> dict[str, str]:
        """What a record says it ran on."""
        return {
            "framework": self.framework_version(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        }

    def layer_at(self, net: Any, path: LayerPath) -> Any:
        node = net
        for index in path:
            node = self.child(node, index)
        return node

    def observed_params(self, model: Model) -> list[Observed]:
        """Unique parameters by object identity, in walk order; the first position names each."""
        seen: dict[int, Observed] = {}
        for slot in model.spec.dense_slots:
            for role in ROLES:
                position = param_name(slot.path, role)
                param = self.param_object(model, position)
                seen.setdefault(id(param), (position, param, []))[2].append(position)
        return list(seen.values())

    def list_params(self, model: Model) -> tuple[ParamInfo, ...]:
        """Every unique parameter, in the spec's owner order, with the positions observed to use it."""
        self.ensure_built(model)
        infos = []
        for name, param, positions in self.observed_params(model):
            native_name, native_shape, dtype = self.describe_param(model, param)
            role = split_param_name(name)[1]
            swap = role == "weight" and self.weight_layout == WeightLayout.IN_OUT
            infos.append(
                ParamInfo(
                    name=name,
                    native_name=native_name,
                    native_shape=tuple(native_shape),
                    shape=tuple(native_shape)[::-1] if swap else tuple(native_shape),
                    dtype=dtype,
                    native_class=qualname(param),
                    positions=tuple(positions),
                )
            )
        return tuple(infos)

    def native_type(self, model: Model, position: str) -> str:
        """The qualified class name of the parameter object at ``position``."""
        self._check_position(model, position)
        self.ensure_built(model)
        return qualname(self.param_object(model, position))

    def tie_identity(self, model: Model) -> dict[str, bool]:
        """For the first tie group: is it one layer object, and one parameter object per role?"""
        if not model.spec.ties:
            return {}
        paths = model.spec.ties[0]
        layers = [self.position_table(model)[path] for path in paths]
        params = [[self.param_object(model, param_name(path, role)) for path in paths] for role in ROLES]
        return {
            "same layer object": all(layer is layers[0] for layer in layers),
            "same parameter object": all(p is group[0] for group in params for p in group),
        }

    def grad_state_before_backward(self, model: Model) -> str:
        """One of GradState's values, read off a fresh twin of the same spec (so no earlier
        backward on ``model`` counts), never assumed."""
        fresh = self.build_mlp(model.spec)
        self.materialize(fresh)
        grads = [self.stored_grad(fresh, param) for _, param, _ in self.observed_params(fresh)]
        if all(g is NOT_STORED for g in grads):
            return GradState.NOT_STORED
        if all(g is None for g in grads):
            return GradState.NONE
        if all(g is not None and g is not NOT_STORED and not np.any(np.asarray(g)) for g in grads):
            return GradState.ZEROS
        raise RuntimeError(f"unexpected stored gradients before backward: {[qualname(g) for g in grads]}")

    def native_facts(self, model: Model) -> dict[str, Any]:
        """Framework behaviour for the diff, one plain JSON value per NATIVE_FACT_KEYS entry."""
        self.ensure_built(model)
        listing_call, listing_names = self.listing(model)
        layer_list_call, layers = self.layer_list(model)
        return {
            "listing_call": listing_call,
            "listing_names": list(listing_names),
            "layer_list_call": layer_list_call,
            "layer_list_length": len(layers),
            "unique_layer_objects": len({id(layer) for layer in layers}),
            "serializations": self.serializations(model),
            "tie_identity": self.tie_identity(model),
        }

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

    def load_native_file(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """Entry names of the framework's own file and its values by canonical owner (native
        layout). Unknown, missing or disagreeing entries are refused; ``model`` is not changed."""
        file = path + self.native_file_suffix
        expected = self.native_file_keys(model)
        entries = self.read_native_entries(model, file)
        values: dict[str, np.ndarray] = {}
        for key, value in entries:
            if key not in expected:
                raise ParamFileError(
                    f"{file}: entry {key!r} is not a parameter of {model.spec.name!r}; "
                    f"expected: {', '.join(expected)}"
                )
            owner = expected[key]
            value = np.asarray(value)
            if owner in values and not np.array_equal(values[owner], value):
                raise ParamFileError(f"{file}: entry {key!r} differs from another stored copy of {owner}")
            values[owner] = value
        missing = sorted(set(expected.values()) - set(values))
        if missing:
            raise ParamFileError(f"{file}: holds no entry for {', '.join(missing)}")
        return [key for key, _ in entries], values

    # == public methods, canonical layout ========================================================
    def to_canonical(self, role: str, native: np.ndarray) -> np.ndarray:
        native = np.asarray(native)
        if role == "weight" and self.weight_layout == WeightLayout.IN_OUT:
            return native.T.copy()
        return native

    def to_native(self, role: str, canonical: np.ndarray) -> np.ndarray:
        # A transpose is its own inverse.
        return self.to_canonical(role, canonical)

    def get_param(self, model: Model, name: str) -> np.ndarray:
        """Targeted access: the value at any position, canonical layout."""
        self._check_position(model, name)
        self.ensure_built(model)
        return self.to_canonical(split_param_name(name)[1], self.read_native(model, name))

    def get_by_native_name(self, model: Model, native_name: str) -> np.ndarray:
        """Access by the framework's own name (``0.0.0.weight``, ``params/layers_0/kernel``...),
        canonical layout."""
        self.ensure_built(model)
        canonical = {p.native_name: p.name for p in self.list_params(model)}
        if native_name not in canonical:
            raise KeyError(
                f"{native_name!r} is not a native parameter name of {model.spec.name!r}; "
                f"native names: {', '.join(canonical)}"
            )
        role = split_param_name(canonical[native_name])[1]
        return self.to_canonical(role, self.read_by_native_name(model, native_name))

    def set_param(self, model: Model, name: str, value: np.ndarray) -> None:
        """In-place write through ``name``'s position; a tied partner must see it."""
        owner = self._check_position(model, name)
        array = check_value(model.spec, owner, value)
        self.ensure_built(model)
        self.write_native(model, name, self.to_native(split_param_name(name)[1], array))

    def layer(self, model: Model, index: int | LayerPath) -> LayerParams:
        path = (index,) if isinstance(index, int) else tuple(index)
        weight_name, bias_name = param_name(path, "weight"), param_name(path, "bias")
        self._check_position(model, weight_name)
        self.ensure_built(model)
        native_w, native_b = self.read_native(model, weight_name), self.read_native(model, bias_name)
        return LayerParams(
            path,
            self.to_canonical("weight", native_w),
            np.asarray(native_b),
            np.asarray(native_w),
            np.asarray(native_b),
        )

    def forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        """net(x). A wrong input shape is the same ValueError in every backend, raised before the
        framework sees it: a lazy framework would otherwise build its weights from the wrong width."""
        return self.native_forward(model, self._input(model, x))

    def backward(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        """Gradients of a scalar loss for every unique parameter, canonical layout."""
        x = self._input(model, x)
        self.ensure_built(model)
        native = self.native_grads(model, x, loss)
        return {name: self.to_canonical(split_param_name(name)[1], grad) for name, grad in native.items()}

    def sgd_step(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        """One framework-SGD step; returns the loss before it and the applied gradients (canonical)."""
        losses, grads = self.train(model, x, loss, lr, steps=1, watch=True)
        return float(losses[0]), {name: g[0] for name, g in grads.items()}

    def train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool = False
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``steps`` framework-SGD steps on the fast path: losses (steps,) and, with ``watch``, the
        applied gradient of each step per unique parameter, canonical layout (steps, *shape)."""
        x = self._input(model, x)
        self.ensure_built(model)
        losses, native = self.native_train(model, x, loss, lr, steps, watch)
        grads = {
            name: np.swapaxes(g, -1, -2) if self._swaps(name) else np.asarray(g) for name, g in native.items()
        }
        return np.asarray(losses, dtype=np.float64), grads

    @staticmethod
    def _input(model: Model, x: object) -> np.ndarray:
        return np.asarray(check_input(model.spec, x), dtype=np.float32)

    def _swaps(self, name: str) -> bool:
        return split_param_name(name)[1] == "weight" and self.weight_layout == WeightLayout.IN_OUT

    def load_params(
        self, model: Model, values: Mapping[str, np.ndarray], *, allow_nonfinite: bool = False
    ) -> None:
        """Load a full set of unique parameters. Everything is validated first; if a write still
        fails, the previous values are restored, so the model is never left half-loaded."""
        checked = check_values(model.spec, values, allow_nonfinite=allow_nonfinite)
        self.ensure_built(model)
        before = self.snapshot(model)
        try:
            for name, value in checked.items():
                self.write_native(model, name, self.to_native(split_param_name(name)[1], value))
        except Exception:
            for name, value in before.items():
                self.write_native(model, name, self.to_native(split_param_name(name)[1], value))
            raise

    def read_native_params(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """The framework's own file (see save_native_file), as entry names and canonical values.
        The framework's reader runs isolated (common.core.isolate: a child process re-creating this
        adapter and a model of the same spec, under a memory cap and a time limit), so a crash, an
        out-of-memory or a hang is a ParamFileError too, as is whatever the reader raises."""
        from common.core import isolate
        from common.core.untrusted import cause_line, printable

        where = printable(path)
        try:
            adapter = f"{type(self).__module__}:{type(self).__qualname__}"
            entries, native = isolate.read_native(
                adapter,
                model.spec.to_dict(),
                path,
                where=where,
                what=f"the {self.name} native reader",
            )
        except isolate.ReaderError as error:
            raise ParamFileError(
                f"{where}: cannot read it as a {self.name} native parameter file "
                f"({error.type_name}: {cause_line(error.message)})"
            ) from None
        values = {name: self.to_canonical(split_param_name(name)[1], v) for name, v in native.items()}
        return entries, values

    def import_native(self, model: Model, path: str) -> None:
        """Load the framework's own file into ``model``: validated in full, then assigned atomically."""
        self.load_params(model, self.read_native_params(model, path)[1])

    def snapshot(self, model: Model) -> dict[str, np.ndarray]:
        """Copies of every unique parameter, canonical layout."""
        return {p.name: np.array(self.get_param(model, p.name)) for p in model.spec.params}

    @staticmethod
    def _check_position(model: Model, name: str) -> str:
        """The owner behind a position name; KeyError naming it if it is not a Dense position."""
        return model.spec.owner_of(name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.framework_version()}>"
