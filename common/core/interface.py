"""The framework-neutral interface every backend adapter implements.

Design requirements:
- only numpy arrays, tuples, strings and small frozen dataclasses cross it;
- canonical names (``layers.2.weight``) and canonical layout (weights ``(out, in)``) everywhere;
- adapters translate; they never decide what is correct (that is ``common.core.oracle`` and the tests);
- a position name reads through the native object at that position, so a tie is observed, not
  assumed from the spec.

An adapter implements the abstract primitives; ``Backend`` builds the public methods on them, so
validation and layout conversion are written once.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from common.core.oracle import Loss
from common.core.params import check_value, check_values
from common.core.spec import LayerPath, ModelSpec, param_name, split_param_name
from common.errors import ParamFileError

__all__ = ["NATIVE_FACT_KEYS", "Backend", "GradState", "LayerParams", "Model", "ParamInfo", "WeightLayout"]


class WeightLayout:
    OUT_IN = "(out, in)"
    IN_OUT = "(in, out)"


class GradState:
    """What a framework holds on a parameter before any backward pass."""

    NONE = "none"
    ZEROS = "zeros"
    NOT_STORED = "not stored"


@dataclass
class Model:
    """A built model: the spec, the native object, and whatever else the adapter must keep
    (Flax keeps its variables here, since a linen module holds none)."""

    spec: ModelSpec
    native: Any
    state: dict[str, Any] = field(default_factory=dict)


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


class Backend(abc.ABC):
    name: ClassVar[str]  # canonical backend name, e.g. "torch"
    weight_layout: ClassVar[str]  # WeightLayout.OUT_IN or WeightLayout.IN_OUT
    lazy_mechanism: ClassVar[str]  # how input size is inferred, e.g. "nn.LazyLinear"
    tie_mechanism: ClassVar[str]  # how a layer is shared, e.g. "the same module object"

    # -- primitives each adapter implements ------------------------------------------------------
    @abc.abstractmethod
    def framework_version(self) -> str: ...

    @abc.abstractmethod
    def build_mlp(self, spec: ModelSpec) -> Model:
        """Build with lazy input size (LazyLinear / deferred init / init(x) / build-on-call)."""

    @abc.abstractmethod
    def unbuilt_params(self, model: Model) -> dict[str, str]:
        """Before any forward pass: native name -> the shape as the framework shows it then
        (e.g. "(8, 0)", "uninitialized"). Empty if the framework holds no parameters yet."""

    @abc.abstractmethod
    def materialize(self, model: Model) -> None:
        """Make shapes known (one forward pass on zeros) if the framework has not yet; idempotent."""

    @abc.abstractmethod
    def forward(self, model: Model, x: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def list_params(self, model: Model) -> tuple[ParamInfo, ...]:
        """Every unique parameter, in the spec's owner order, with the positions observed to use it."""

    @abc.abstractmethod
    def read_native(self, model: Model, position: str) -> np.ndarray:
        """The value at a position (any position, tied or not), in native layout."""

    @abc.abstractmethod
    def write_native(self, model: Model, position: str, value: np.ndarray) -> None:
        """Write in place, through the native object at ``position``; value is native layout."""

    @abc.abstractmethod
    def read_by_native_name(self, model: Model, native_name: str) -> np.ndarray:
        """The value the framework's own lookup finds under ``native_name`` (the name list_params
        reports), native layout; KeyError naming it if there is none."""

    @abc.abstractmethod
    def native_type(self, model: Model, position: str) -> str:
        """The qualified class name of the parameter object at ``position``."""

    @abc.abstractmethod
    def grad_state_before_backward(self, model: Model) -> str:
        """One of GradState's values, read off the framework, not assumed: what a model of this
        spec holds before any backward pass (an adapter may read it off a fresh twin)."""

    @abc.abstractmethod
    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        """Gradients of the loss for every unique native parameter, keyed by canonical owner
        name, in native layout. Must not accumulate across calls."""

    @abc.abstractmethod
    def native_sgd_step(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        """One step of the framework's own plain SGD optimizer. Returns the loss before the step
        and the gradients the optimizer applied (canonical owner name -> native layout)."""

    @abc.abstractmethod
    def save_native_file(self, model: Model, path: str) -> str:
        """Save with the framework's own format; returns the call used, e.g. "torch.save(net.state_dict())".
        ``path`` has no extension; return value's file is ``path`` + the format's extension."""

    @abc.abstractmethod
    def load_native_file(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """Read a file that save_native_file wrote for the same spec, never running code from it
        (torch: weights_only=True, its restricted unpickler; the others read data formats).
        Returns the entry names stored in the file, in order, and the values mapped to canonical
        owner names in native layout. Does not modify ``model``."""

    # -- optional hooks ---------------------------------------------------------------------------
    def seed(self, seed: int) -> None:  # noqa: B027 - optional: a no-op where init is already seeded
        """Seed the framework's own RNG, so default initial values are reproducible."""

    # -- public methods built on the primitives ---------------------------------------------------
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
        self.materialize(model)
        return self.to_canonical(split_param_name(name)[1], self.read_native(model, name))

    def get_by_native_name(self, model: Model, native_name: str) -> np.ndarray:
        """Access by the framework's own name (``0.0.0.weight``, ``params/layers_0/kernel``...),
        canonical layout."""
        self.materialize(model)
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
        self.materialize(model)
        self.write_native(model, name, self.to_native(split_param_name(name)[1], array))

    def layer(self, model: Model, index: int | LayerPath) -> LayerParams:
        path = (index,) if isinstance(index, int) else tuple(index)
        weight_name, bias_name = param_name(path, "weight"), param_name(path, "bias")
        self._check_position(model, weight_name)
        self.materialize(model)
        native_w, native_b = self.read_native(model, weight_name), self.read_native(model, bias_name)
        return LayerParams(
            path,
            self.to_canonical("weight", native_w),
            np.asarray(native_b),
            np.asarray(native_w),
            np.asarray(native_b),
        )

    def backward(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        """Gradients of a scalar loss for every unique parameter, canonical layout."""
        self.materialize(model)
        native = self.native_grads(model, np.asarray(x, dtype=np.float32), loss)
        return {name: self.to_canonical(split_param_name(name)[1], grad) for name, grad in native.items()}

    def sgd_step(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        """One framework-SGD step; returns the loss before it and the applied gradients (canonical)."""
        self.materialize(model)
        value, native = self.native_sgd_step(model, np.asarray(x, dtype=np.float32), loss, lr)
        return value, {name: self.to_canonical(split_param_name(name)[1], g) for name, g in native.items()}

    def load_params(
        self, model: Model, values: Mapping[str, np.ndarray], *, allow_nonfinite: bool = False
    ) -> None:
        """Load a full set of unique parameters. Everything is validated first; if a write still
        fails, the previous values are restored, so the model is never left half-loaded."""
        checked = check_values(model.spec, values, allow_nonfinite=allow_nonfinite)
        self.materialize(model)
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
        Whatever the framework's reader raises on a bad file becomes one ParamFileError."""
        try:
            entries, native = self.load_native_file(model, path)
        except ParamFileError:
            raise
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            raise ParamFileError(
                f"{path}: cannot read it as a {self.name} native parameter file "
                f"({type(error).__name__}: {first_line})"
            ) from None
        values = {name: self.to_canonical(split_param_name(name)[1], v) for name, v in native.items()}
        return entries, values

    def import_native(self, model: Model, path: str) -> None:
        """Load the framework's own file into ``model``: validated in full, then assigned atomically."""
        self.load_params(model, self.read_native_params(model, path)[1])

    def snapshot(self, model: Model) -> dict[str, np.ndarray]:
        """Copies of every unique parameter, canonical layout."""
        return {p.name: np.array(self.get_param(model, p.name)) for p in model.spec.params}

    @abc.abstractmethod
    def native_facts(self, model: Model) -> dict[str, Any]:
        """Framework behaviour for the diff, one value per NATIVE_FACT_KEYS entry, all plain
        JSON values (str, int, bool, lists and dicts of them)."""

    @staticmethod
    def _check_position(model: Model, name: str) -> str:
        """The owner behind a position name; KeyError naming it if it is not a Dense position."""
        return model.spec.owner_of(name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.framework_version()}>"
