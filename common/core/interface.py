"""What users call: ``Backend``, the public API of every backend (canonical names and layout,
validation, loading, files), and the machinery written once on an adapter's primitives: the
recursive builder, unique parameters by object identity, the tie-identity facts, the fresh-twin
grad state and the native-file entry checks. What an adapter implements is ``Adapter``, in
``common.core.adapter``; the values that cross the interface are defined there and re-exported.

Read paths, by name: ``get_param`` (a position, canonical layout), ``get_by_native_name``,
``snapshot`` (every unique parameter), ``native_file_values`` (the framework's own file, checked,
in the calling process: the isolated child uses it), ``read_native_file`` (the same, isolated);
write paths: ``set_param`` (one position), ``load_params`` (all, atomically),
``import_native_file`` (read isolated, then load_params), and ``save_native_file`` (the
framework's own file, through a temporary file renamed into place).
"""

from __future__ import annotations

import errno
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.atomic import atomic_path
from common.core.adapter import (
    NATIVE_FACT_KEYS,
    NOT_STORED,
    Adapter,
    GradState,
    LayerParams,
    Model,
    Observed,
    ParamInfo,
    WeightLayout,
    qualname,
)
from common.core.oracle import MODES, Loss, check_input
from common.core.params import check_state_values, check_value, check_values, listed
from common.core.spec import (
    ROLES,
    BatchNorm,
    Block,
    Dense,
    Embedding,
    Layer,
    LayerPath,
    ModelSpec,
    param_name,
    spec_from_dict,
    split_param_name,
)
from common.core.untrusted import cause_line, descriptor_path, open_regular, printable, shown
from common.errors import ParamFileError, UsageError

__all__ = [
    "NATIVE_FACT_KEYS",
    "NOT_STORED",
    "Adapter",
    "Backend",
    "GradState",
    "LayerParams",
    "Model",
    "Observed",
    "ParamInfo",
    "WeightLayout",
    "qualname",
]


class Backend(Adapter):
    """An adapter's public face: subclass it, implement ``Adapter``'s primitives, and users call
    what is defined here."""

    # == machinery written once ==================================================================
    def build_mlp(self, spec: ModelSpec | Mapping[str, Any]) -> Model:
        """Walk the spec (or spec data, validated here before any adapter call): a Block becomes
        a nested sequential, a tied position gets ``share_dense(owner)``. The position table is
        then read back through ``child``, so it holds what the framework really holds."""
        if not isinstance(spec, ModelSpec):
            spec = spec_from_dict(spec)
        self._check_capabilities(spec)
        owners = {slot.path: slot.owner for slot in spec.layer_slots}
        tables = {slot.path: slot.table for slot in spec.dense_slots if slot.table is not None}
        widths = {slot.path: slot.in_features for slot in spec.dense_slots}
        features = {slot.path: slot.features for slot in spec.norm_slots}
        made: dict[LayerPath, Any] = {}

        def build(layers: tuple[Layer, ...], prefix: LayerPath) -> Any:
            container = self.new_sequential(spec, prefix)
            children = []
            with self.children_scope(container):
                for index, layer in enumerate(layers):
                    path = prefix + (index,)
                    if isinstance(layer, Block):
                        children.append(build(layer.layers, path))
                    elif isinstance(layer, Embedding):
                        made[path] = self.new_embedding(layer.vocab, layer.dim)
                        children.append(made[path])
                    elif isinstance(layer, Dense):
                        owner = owners[path]  # owners come first in walk order
                        if path in tables:
                            made[path] = self.tied_output(made[tables[path]], layer.units)
                        elif owner == path:
                            made[path] = self.new_dense(layer.units, widths[path])
                        else:
                            made[path] = self.share_dense(made[owner], layer.units)
                        children.append(made[path])
                    elif isinstance(layer, BatchNorm):
                        owner = owners[path]
                        made[path] = (
                            self.new_batchnorm(features[path], layer.momentum, layer.eps)
                            if owner == path
                            else self.share_batchnorm(made[owner])
                        )
                        children.append(made[path])
                    else:
                        children.append(self.new_relu())
            return self.finish_sequential(container, children)

        net = self.construct(spec, lambda: build(spec.layers, ()))
        model = Model(spec, net, adapter_state=self.new_adapter_state())
        self.position_table(model)
        self.finish_model(model)
        for slot in spec.layer_slots:
            if not slot.tied and not spec.trainable_at(slot.path):
                self.freeze(model, slot.path)
        return model

    def _check_capabilities(self, spec: ModelSpec) -> None:
        """A spec that needs what this backend declares it lacks is refused in one line, before
        any adapter call."""
        for capability in spec.needs:
            declared = self.declaration.capability(capability)
            if not declared.value:
                raise UsageError(
                    f"backend {self.name!r} cannot build spec {spec.name!r}: it needs {capability}, "
                    f"which the backend declares it lacks ({declared.reason})"
                )

    def versions(self) -> dict[str, str]:
        """What a record says it ran on."""
        return {
            "framework": self.framework_version(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        }

    def list_params(self, model: Model) -> tuple[ParamInfo, ...]:
        """Every unique parameter, in the spec's owner order, with the positions observed to use it."""
        self.ensure_built(model)
        infos = []
        for name, param, positions in self.observed_params(model):
            native_name, native_shape, dtype = self.describe_param(model, param)
            swap = self.transposes(model.spec, name)
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
        # A transposed tie shares the table only: the roles every position of the group has.
        roles = [role for role in ROLES if all(role in model.spec.roles_at(path) for path in paths)]
        params = [[self.param_object(model, param_name(path, role)) for path in paths] for role in roles]
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

    def save_native_file(self, model: Model, path: str) -> str:
        """Save with the framework's own format to ``path + native_file_suffix``; return the call.
        Written to a temporary file beside it, read back, and only then renamed into place, so a
        write that fails midway (a full disk) leaves an earlier file at that path intact, even
        where the framework's writer does not report the failure (MXNet's does not)."""
        suffix = self.native_file_suffix
        with atomic_path(path + suffix, suffix=suffix) as temporary:
            call = self.write_native_file(model, temporary)
            try:
                self.native_file_values(model, temporary.removesuffix(suffix))
            except Exception as error:  # our own file, just written: anything wrong is the write
                raise OSError(
                    errno.EIO, f"the {self.name} writer left an incomplete file ({cause_line(str(error))})"
                ) from None
            return call

    def native_file_values(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """Entry names of the framework's own file and its values by canonical owner (native
        layout). The file is opened here, as a regular file of at most ``native_file_budget``
        bytes (a FIFO, a device or a directory is refused at once, checked on the descriptor),
        and the framework reads that very file. Every entry must be float32: the one dtype rule
        of every reader, native or portable, so nothing is cast silently. Unknown, missing or
        disagreeing entries are refused; every refusal names the file; ``model`` is not changed."""
        file = path + self.native_file_suffix
        where = printable(file)
        expected, budget = self.native_file_keys(model), self.native_file_budget(model)
        try:
            with open_regular(file, max_bytes=budget, error=ParamFileError) as (fd, _):
                entries = self.read_native_file_entries(model, descriptor_path(fd, file))
        except ParamFileError as error:
            message = str(error)
            raise ParamFileError(message if message.startswith(where) else f"{where}: {message}") from None
        values: dict[str, np.ndarray] = {}
        for key, value in entries:
            if key not in expected:
                raise ParamFileError(
                    f"{where}: entry {shown(key)} is not a parameter of {shown(model.spec.name)}; "
                    f"expected: {listed(list(expected))}"
                )
            owner = expected[key]
            value = np.asarray(value)
            if value.dtype != np.dtype(np.float32):
                raise ParamFileError(
                    f"{where}: entry {shown(key)}: dtype={value.dtype}, but should be float32"
                )
            if owner in values and not np.array_equal(values[owner], value):
                raise ParamFileError(
                    f"{where}: entry {shown(key)} differs from another stored copy of {owner}"
                )
            values[owner] = value
        missing = sorted(set(expected.values()) - set(values))
        if missing:
            raise ParamFileError(f"{where}: holds no entry for {', '.join(missing)}")
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

    def transposes(self, spec: ModelSpec, name: str) -> bool:
        """Whether the native value at ``name`` (a position or a parameter) is the canonical one
        transposed: a Dense weight in an (in, out) framework. An embedding's table is (vocab, dim)
        everywhere, also where a Dense reads it (a transposed tie applies it transposed instead)."""
        return (
            self.weight_layout == WeightLayout.IN_OUT
            and split_param_name(name)[1] == "weight"
            and spec.param_kind(name) == "dense"
        )

    def canonical_of(self, spec: ModelSpec, name: str, native: np.ndarray) -> np.ndarray:
        """The native value at ``name`` in canonical layout (and back: a transpose is its own inverse)."""
        return np.asarray(native).T.copy() if self.transposes(spec, name) else np.asarray(native)

    def native_of(self, spec: ModelSpec, name: str, canonical: np.ndarray) -> np.ndarray:
        return self.canonical_of(spec, name, canonical)

    def get_param(self, model: Model, name: str) -> np.ndarray:
        """Targeted access: the value at any position, canonical layout."""
        self._check_position(model, name)
        self.ensure_built(model)
        return self.canonical_of(model.spec, name, self.native_value(model, name))

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
        return self.canonical_of(
            model.spec, canonical[native_name], self.native_value_by_name(model, native_name)
        )

    def set_param(self, model: Model, name: str, value: np.ndarray) -> None:
        """In-place write through ``name``'s position; a tied partner must see it."""
        owner = self._check_position(model, name)
        array = check_value(model.spec, owner, value)
        self.ensure_built(model)
        self.write_native_value(model, name, self.native_of(model.spec, name, array))

    def layer(self, model: Model, index: int | LayerPath) -> LayerParams:
        path = (index,) if isinstance(index, int) else tuple(index)
        weight_name, bias_name = param_name(path, "weight"), param_name(path, "bias")
        self._check_position(model, weight_name)
        self.ensure_built(model)
        native_w, native_b = self.native_value(model, weight_name), self.native_value(model, bias_name)
        return LayerParams(
            path,
            self.canonical_of(model.spec, weight_name, native_w),
            np.asarray(native_b),
            np.asarray(native_w),
            np.asarray(native_b),
        )

    def forward(self, model: Model, x: np.ndarray, mode: str = "inference") -> np.ndarray:
        """net(x), in inference mode (running statistics) or training mode (batch statistics,
        running statistics updated). A wrong input shape is the same ValueError in every backend,
        raised before the framework sees it: a lazy framework would otherwise build its weights
        from the wrong width."""
        x = self._input(model, x)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}, but should be one of {MODES}")
        if mode == "training" and model.spec.has_batchnorm:
            self.ensure_built(model)
            return self.native_forward_training(model, x)
        return self.native_forward(model, x)

    def backward(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        """Gradients of a scalar loss for every unique trainable parameter, canonical layout, in
        training mode: a BatchNorm normalizes by the batch and updates its running statistics,
        as one training forward pass does."""
        x = self._input(model, x)
        self.ensure_built(model)
        native = self.native_grads(model, x, loss)
        return {name: self.canonical_of(model.spec, name, grad) for name, grad in native.items()}

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
            name: np.swapaxes(g, -1, -2)
            if self.transposes(model.spec, name) and np.ndim(g) == 3
            else np.asarray(g)
            for name, g in native.items()
        }
        return np.asarray(losses, dtype=np.float64), grads

    @staticmethod
    def _input(model: Model, x: object) -> np.ndarray:
        """The checked input: float32 features, or int64 ids for a model that starts with an Embedding."""
        checked = check_input(model.spec, x)
        return checked if model.spec.input_kind == "ids" else np.asarray(checked, dtype=np.float32)

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
                self.write_native_value(model, name, self.native_of(model.spec, name, value))
        except Exception:
            for name, value in before.items():
                self.write_native_value(model, name, self.native_of(model.spec, name, value))
            raise

    def read_native_file(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """The framework's own file (see save_native_file), as entry names and canonical values.
        The framework's reader runs isolated (common.core.isolate: a child process re-creating this
        adapter and a model of the same spec, under a memory cap and a time limit), so a crash, an
        out-of-memory or a hang is a ParamFileError too, as is whatever the reader raises."""
        from common.core import isolate

        where = printable(path)
        try:
            adapter = f"{type(self).__module__}:{type(self).__qualname__}"
            entries, native = isolate.read_native_file_isolated(
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
        values = {name: self.canonical_of(model.spec, name, v) for name, v in native.items()}
        return entries, values

    def import_native_file(self, model: Model, path: str) -> None:
        """Load the framework's own file into ``model``: validated in full, then assigned atomically;
        every refusal names the file."""
        values = self.read_native_file(model, path)[1]
        try:
            self.load_params(model, values)
        except ParamFileError as error:  # raised by the checks, before anything is written
            raise ParamFileError(f"{printable(path)}: {error}") from None

    # -- non-trainable state: BatchNorm running statistics ------------------------------------------
    def list_state(self, model: Model) -> tuple[ParamInfo, ...]:
        """Every unique piece of state (canonical names such as ``layers.1.running_mean``), with
        native names, shapes and the positions observed to use it; apart from list_params."""
        self.ensure_built(model)
        infos = []
        for name, state, positions in self.observed_state(model):
            native_name, native_shape, dtype = self.describe_state(model, state)
            infos.append(
                ParamInfo(
                    name,
                    native_name,
                    tuple(native_shape),
                    tuple(native_shape),
                    dtype,
                    qualname(state),
                    tuple(positions),
                )
            )
        return tuple(infos)

    def get_state(self, model: Model, name: str) -> np.ndarray:
        model.spec.state_owner_of(name)
        self.ensure_built(model)
        return np.asarray(self.native_state_value(model, name))

    def set_state(self, model: Model, name: str, value: np.ndarray) -> None:
        owner = model.spec.state_owner_of(name)
        (array,) = check_state_values(model.spec, {owner: value}, only=(owner,)).values()
        self.ensure_built(model)
        self.write_native_state_value(model, name, array)

    def load_state(self, model: Model, values: Mapping[str, np.ndarray]) -> None:
        """Load every unique piece of state, validated first; restored on a failed write."""
        checked = check_state_values(model.spec, values)
        self.ensure_built(model)
        before = self.state_snapshot(model)
        try:
            for name, value in checked.items():
                self.write_native_state_value(model, name, value)
        except Exception:
            for name, value in before.items():
                self.write_native_state_value(model, name, value)
            raise

    def state_snapshot(self, model: Model) -> dict[str, np.ndarray]:
        return {p.name: np.array(self.get_state(model, p.name)) for p in model.spec.state}

    def snapshot(self, model: Model) -> dict[str, np.ndarray]:
        """Copies of every unique parameter, canonical layout."""
        return {p.name: np.array(self.get_param(model, p.name)) for p in model.spec.params}

    @staticmethod
    def _check_position(model: Model, name: str) -> str:
        """The owner behind a position name; KeyError naming it if it is not a Dense position."""
        return model.spec.owner_of(name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.framework_version()}>"
