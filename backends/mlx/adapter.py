"""MLX adapter: ``nn.Sequential`` of ``nn.Linear`` / ``nn.ReLU``; a tie is one ``nn.Linear``
object placed at every position that uses it.

MLX quirks this adapter is built around:
- MLX is eager about shapes: ``nn.Linear(input_dims, output_dims)`` draws its weight, ``(out,
  in)``, at construction, so every Dense needs its input width (no lazy input size);
- a parameter is an immutable ``mx.array`` held in its module's dict; a write replaces the array
  in that dict (``Module.update``), so a shared module shows the new array at every position, and
  a tie is observed as one ``nn.Linear`` holding one ``weight`` array;
- ``net.parameters()`` walks the module tree by position, so a shared ``nn.Linear`` is listed
  (and saved by ``save_weights``) once per position: 8 entries for the tied MLP's 6 parameters.
  ``nn.value_and_grad(net, f)`` differentiates that tree: each position's leaf is written into the
  one module in turn and the last write wins, so the last position's leaf carries the whole summed
  gradient and the others zeros; ``optimizer.update`` then writes the module once per position,
  the last (summed) write winning, and keeps optimizer state per position.
Gradients here are taken, as mlx-lm's tied models have them, with respect to a tree that holds
each shared parameter once: ``Module.filter_and_map`` (MLX's own filter, which ``parameters()`` and
``trainable_parameters()`` are built on) keeps a module at its first position only and leaves the
others ``{}``, as MLX leaves a frozen module; ``Module.update`` and ``Optimizer.update`` take such a
partial tree as documented. So a tied parameter has one gradient leaf, the sum over its uses, and
one SGD step updates it once with that sum.
An Embedding is ``nn.Embedding(vocab, dims)``, its table the (vocab, dim) array ``weight``. A Dense
tied to it is ``TiedOutput``: a module that holds the embedding itself and calls
``embedding.as_linear(x)`` (MLX's own call for "input embedding and output projection weights are
tied") plus a bias of its own. Its weight is the embedding's array wherever it is read, since it
reads through the one module; sharing the array instead (``head.weight = emb.weight``) would be
untied by the first update, which replaces the array in one module's dict only (measured). The
embedding is a child of both positions, so MLX's tree lists and saves its table at each
(``layers.3.embedding.weight``), as it does a shared ``nn.Linear``'s arrays, and the gradient
tree keeps it at its first position only, as above.
BatchNorm is ``nn.BatchNorm(num_features, eps, momentum)``, whose momentum is the canonical one
(the weight of the new batch); ``net.train()`` / ``net.eval()`` pick batch or running statistics.
Its running_mean and running_var are arrays in the module like its weight and bias, frozen from
construction: ``parameters()`` (and ``save_weights``) hold them, ``trainable_parameters()`` does
not, so no gradient reaches them; a training call replaces them in the module. A tied BatchNorm is
one module at both positions. Freezing is ``module.freeze()``: its arrays leave
``trainable_parameters()``, so the differentiated tree, the gradients and the SGD step skip them.
Fast path: the step of MLX's compiled-training examples, ``partial(mx.compile, inputs=state,
outputs=state)`` over ``[net.state, optimizer.state]``, with ``mx.eval(state)`` after each step;
losses and watched gradients stay ``mx.array`` until the end. ``net.state`` holds the running
statistics, so the statistics a step computes come out of the compiled step with the parameters.
The training flag is read when the step is traced: ``net.train()`` is set before every call.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from common.core.interface import NOT_STORED, Backend, Model
from common.core.oracle import Loss
from common.core.params import listed
from common.core.spec import LayerPath, param_name, split_param_name
from common.core.untrusted import shown
from common.errors import ParamFileError

__all__ = ["MlxBackend"]


def _keep_compiled_kernels() -> None:
    """MLX keeps the C++ kernels it compiles under $TMPDIR (std::filesystem::temp_directory_path),
    which paramparity's guard makes fresh for every command: point the process's TMPDIR at the
    folder PARITY_MLX_KERNEL_CACHE names (the declaration's run_env_vars), after pinning Python's
    own temporary folder, so tempfile still writes where the guard cleans up."""
    folder = os.environ.get("PARITY_MLX_KERNEL_CACHE")
    if not folder:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a cache: without it, MLX compiles as usual
        return
    tempfile.tempdir = tempfile.gettempdir()
    os.environ["TMPDIR"] = folder


_keep_compiled_kernels()  # before anything is compiled

# A native file holds float32 values and safetensors framing: allow the values' bytes plus this
# much header per entry (and once), so a file cannot make the reader allocate on its own word.
_HEADER_BYTES_PER_ENTRY = 512
_HEADER_BYTES = 64 * 1024


class TiedOutput(nn.Module):
    """A Dense of ``units`` (= vocab) outputs reading ``embedding``'s table as its weight, through
    ``as_linear``, with a bias of its own (drawn as ``nn.Linear`` draws one)."""

    def __init__(self, embedding: nn.Embedding, units: int) -> None:
        super().__init__()
        self.embedding = embedding  # the very module: a child here too, so MLX's tree holds it
        scale = math.sqrt(1.0 / embedding.weight.shape[1])
        self.bias = mx.random.uniform(low=-scale, high=scale, shape=(units,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.embedding.as_linear(x) + self.bias


_LAYERS = (nn.Embedding, nn.Linear, nn.BatchNorm, TiedOutput)  # the layers that hold parameters


@dataclass
class MlxState:
    """What the adapter keeps per model: the native-name table, keyed by array identity. Each
    entry holds its array, so an id is never reused while it is in the table, and a stale table
    (after any update replaced the arrays) is seen on the first miss and rebuilt once."""

    native_names: dict[int, tuple[mx.array, str]] = field(default_factory=dict)


def _state(model: Model) -> MlxState:
    return model.adapter_state


def _to_numpy(array: mx.array) -> np.ndarray:
    return np.array(array, dtype=np.float32, copy=True)


def _native_key(path: LayerPath, role: str, *, reads_table: bool = False) -> str:
    """The key ``tree_flatten(net.parameters())`` gives a position: nn.Sequential keeps its
    children in the list ``layers``, so (0, 1) is ``layers.0.layers.1``; a TiedOutput's weight is
    its embedding's (``layers.3.embedding.weight``)."""
    return ".".join(f"layers.{index}" for index in path) + (".embedding" if reads_table else "") + f".{role}"


def _holder(layer: nn.Module, role: str) -> tuple[nn.Module, str]:
    """The module whose dict holds the array of ``role`` at ``layer``, and its key there: a
    TiedOutput's weight is held by its embedding."""
    if isinstance(layer, TiedOutput) and role == "weight":
        return layer.embedding, "weight"
    return layer, role


def _unique_trainable(net: nn.Module) -> dict:
    """``net.trainable_parameters()`` with each module kept at its first position only (by
    identity); its later positions are ``{}``, as MLX leaves a frozen module."""
    seen: set[int] = set()

    def first_use(module: nn.Module, key: str, value: Any) -> bool:
        if not nn.Module.trainable_parameter_filter(module, key, value):
            return False
        if isinstance(value, nn.Module):
            if id(value) in seen:
                return False
            seen.add(id(value))
        return True

    return net.filter_and_map(first_use)


def _write(layer: nn.Module, role: str, position: str, value: np.ndarray) -> None:
    value = np.asarray(value, dtype=np.float32)
    if tuple(layer[role].shape) != value.shape:
        raise ValueError(f"{position}: shape={value.shape}, but should be {tuple(layer[role].shape)}")
    layer.update({role: mx.array(value)})  # the one module: every position sees it


def _objective(net: nn.Module, kind: str) -> Callable[..., mx.array]:
    """``f(params, x, *target)``: the loss of ``net`` with ``params`` written into it, the form
    ``nn.value_and_grad`` wraps."""

    def objective(params: dict, x: mx.array, *target: mx.array) -> mx.array:
        net.update(params)
        y = net(x)
        return y.sum() if kind == "sum" else nn.losses.mse_loss(y, target[0], reduction="mean")

    return objective


class MlxBackend(Backend):
    name = "mlx"
    lazy_mechanism = "none: nn.Linear(input_dims, output_dims) draws its weight at construction"
    tie_mechanism = "the same nn.Linear object at both positions (its arrays listed at each)"
    native_file_suffix = ".safetensors"

    def framework_version(self) -> str:
        return f"mlx {mx.__version__}"

    def new_adapter_state(self) -> MlxState:
        return MlxState()

    def seed(self, seed: int) -> None:
        mx.random.seed(seed)

    # -- devices ---------------------------------------------------------------------------------
    def available_devices(self) -> dict[str, str]:
        cuda = "" if mx.cuda.is_available() else f"mlx {mx.__version__} has no CUDA backend in this build"
        return {"cpu": "", "cuda": cuda}

    def use_device(self, device: str) -> None:
        super().use_device(device)
        mx.set_default_device(mx.gpu if device == "cuda" else mx.cpu)

    def param_location(self, model: Model, position: str) -> tuple[str, int]:
        # Unified memory: an mx.array has no device of its own; operations run on the default
        # device. The buffer protocol exposes the array's own data (evaluating it first).
        kind = "cpu" if mx.default_device() == mx.cpu else "cuda"
        return kind, np.asarray(memoryview(self.param_object(model, position))).ctypes.data

    # -- building --------------------------------------------------------------------------------
    def new_dense(self, units: int, in_features: int) -> nn.Linear:
        return nn.Linear(in_features, units)

    def new_relu(self) -> nn.Module:
        return nn.ReLU()

    def new_embedding(self, vocab: int, dim: int) -> nn.Embedding:
        return nn.Embedding(vocab, dim)

    def tied_output(self, embedding: nn.Embedding, units: int) -> TiedOutput:
        return TiedOutput(embedding, units)

    def new_batchnorm(self, features: int, momentum: float | None, eps: float | None) -> nn.BatchNorm:
        # MLX's momentum is the canonical one: the weight of the new batch.
        settings = {k: v for k, v in {"momentum": momentum, "eps": eps}.items() if v is not None}
        return nn.BatchNorm(features, **settings)

    def freeze(self, model: Model, path: LayerPath) -> None:
        # Every array of the module leaves trainable_parameters(); a TiedOutput's embedding too,
        # which the spec freezes with it.
        self.position_table(model)[path].freeze()

    def finish_sequential(self, container: Any, children: list[Any]) -> nn.Sequential:
        return nn.Sequential(*children)

    def child(self, container: nn.Sequential, index: int) -> nn.Module:
        return container.layers[index]

    def unbuilt_params(self, model: Model) -> dict[str, str]:
        return {name: str(tuple(p.shape)) for name, p in tree_flatten(model.native.parameters())}

    def materialize(self, model: Model) -> None:
        mx.eval(model.native.parameters())  # the drawn values are lazy until evaluated

    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        model.native.eval()  # inference: BatchNorm uses its running statistics
        return _to_numpy(model.native(mx.array(x)))

    def native_forward_training(self, model: Model, x: np.ndarray) -> np.ndarray:
        net = model.native.train()  # batch statistics; the call replaces the running ones
        y = net(mx.array(x))
        mx.eval(y, net.parameters())
        return _to_numpy(y)

    # -- access by position ----------------------------------------------------------------------
    def param_object(self, model: Model, position: str) -> mx.array:
        module, key = _holder(*self.dense_layer(model, position, _LAYERS))
        return module[key]

    def describe_param(self, model: Model, param: Any) -> tuple[str, tuple[int, ...], str]:
        # One table for parameters and running statistics: net.parameters() holds both.
        table = _state(model).native_names
        entry = table.get(id(param))
        if entry is None or entry[0] is not param:
            table.clear()
            for name, array in tree_flatten(model.native.parameters()):
                table.setdefault(id(array), (array, name))  # a tied array: its first position
            entry = table[id(param)]
        return entry[1], tuple(param.shape), str(param.dtype).removeprefix("mlx.core.")

    def native_value(self, model: Model, position: str) -> np.ndarray:
        return _to_numpy(self.param_object(model, position))

    def write_native_value(self, model: Model, position: str, value: np.ndarray) -> None:
        _write(*_holder(*self.dense_layer(model, position, _LAYERS)), position, value)

    # -- state: BatchNorm's running statistics are frozen arrays of the module ---------------------
    def state_object(self, model: Model, position: str) -> mx.array:
        layer, role = self.batchnorm_layer(model, position, nn.BatchNorm)
        return layer[role]

    def describe_state(self, model: Model, state: Any) -> tuple[str, tuple[int, ...], str]:
        return self.describe_param(model, state)

    def native_state_value(self, model: Model, position: str) -> np.ndarray:
        return _to_numpy(self.state_object(model, position))

    def write_native_state_value(self, model: Model, position: str, value: np.ndarray) -> None:
        _write(*self.batchnorm_layer(model, position, nn.BatchNorm), position, value)

    def state_listing(self, model: Model) -> tuple[str, list[str]]:
        # MLX lists the running statistics with the parameters (net.parameters(), save_weights);
        # only trainable_parameters() leaves them out, as it leaves out a frozen module's arrays.
        return self.listing(model)

    def native_value_by_name(self, model: Model, native_name: str) -> np.ndarray:
        params = dict(tree_flatten(model.native.parameters()))
        if native_name not in params:
            raise KeyError(f"{native_name!r} is not in tree_flatten(net.parameters())")
        return _to_numpy(params[native_name])

    def stored_grad(self, model: Model, param: Any) -> Any:
        return NOT_STORED  # gradients are trees returned by value_and_grad, never on an array

    # -- facts -----------------------------------------------------------------------------------
    def listing(self, model: Model) -> tuple[str, list[str]]:
        return "tree_flatten(net.parameters())", [name for name, _ in tree_flatten(model.native.parameters())]

    def layer_list(self, model: Model) -> tuple[str, list[Any]]:
        return "net.layers", list(model.native.layers)

    def serializations(self, model: Model) -> dict[str, list[str]]:
        net = model.native
        return {
            "net.save_weights('.safetensors')": [name for name, _ in tree_flatten(net.parameters())],
            "tree_flatten(net.trainable_parameters())": [
                name for name, _ in tree_flatten(net.trainable_parameters())
            ],
            "tree_flatten(net.children())": [
                name for name, _ in tree_flatten(net.children(), is_leaf=nn.Module.is_module)
            ],
        }

    # -- gradients and training ------------------------------------------------------------------
    @staticmethod
    def _loss_inputs(x: np.ndarray, loss: Loss) -> tuple[mx.array, ...]:
        return (mx.array(x),) if loss.kind == "sum" else (mx.array(x), mx.array(loss.target))

    def _owners(self, model: Model) -> dict[str, str]:
        """Native key of each unique parameter's first position -> its canonical owner name."""
        names = {}
        for name, _, positions in self.observed_params(model):
            path, role = split_param_name(positions[0])
            names[_native_key(path, role)] = name
        return names

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        net = model.native.train()  # batch statistics, running statistics updated
        params = _unique_trainable(net)  # a frozen module's arrays are not in it: no gradient
        _, grads = mx.value_and_grad(_objective(net, loss.kind))(params, *self._loss_inputs(x, loss))
        net.update(params)  # put the arrays back in place of the traced ones
        mx.eval(grads, net.parameters())  # the running statistics the pass computed, too
        owners = self._owners(model)
        return {owners[key]: _to_numpy(grad) for key, grad in tree_flatten(grads)}

    def _optimizer(self, model: Model) -> optim.SGD:
        def make() -> optim.SGD:
            optimizer = optim.SGD(learning_rate=0.0)
            optimizer.init(_unique_trainable(model.native))  # its state's shape is fixed from now on
            return optimizer

        return self.compiled(model, "sgd", make)

    def _step(self, model: Model, kind: str, watch: bool) -> tuple[Callable[..., Any], list, list[str]]:
        """One SGD step, compiled once per model, loss kind and watch: its outputs are the loss
        and, with ``watch``, every applied gradient (the unique tree's leaves, in ``keys`` order)."""

        def make() -> tuple[Callable[..., Any], list, list[str]]:
            net, optimizer = model.native, self._optimizer(model)
            grad_fn = mx.value_and_grad(_objective(net, kind))
            state = [net.state, optimizer.state]

            @partial(mx.compile, inputs=state, outputs=state)
            def step(*inputs: mx.array) -> tuple[mx.array, ...]:
                self.note_trace(model)
                value, grads = grad_fn(_unique_trainable(net), *inputs)
                optimizer.update(net, grads)
                return (value, *(g for _, g in tree_flatten(grads))) if watch else (value,)

            return step, state, [key for key, _ in tree_flatten(_unique_trainable(net))]

        return self.compiled(model, ("step", kind, watch), make)

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        self._optimizer(model).learning_rate = lr  # an array in its state: no retrace
        model.native.train()  # read when the step is traced: batch statistics, updated in net.state
        step, state, keys = self._step(model, loss.kind, watch)
        inputs = self._loss_inputs(x, loss)
        outputs = []
        for _ in range(steps):
            out = step(*inputs)
            mx.eval(out, state)
            outputs.append(out)
        losses = np.array(mx.stack([out[0] for out in outputs]), dtype=np.float64)
        if not watch:
            return losses, {}
        # One numpy stack per parameter over evaluated arrays: cheaper than one mx.stack each.
        owners = self._owners(model)
        return losses, {
            owners[key]: np.stack([np.asarray(out[i]) for out in outputs]).astype(np.float32, copy=False)
            for i, key in enumerate(keys, start=1)
        }

    # -- files -----------------------------------------------------------------------------------
    def write_native_file(self, model: Model, file: str) -> str:
        model.native.save_weights(file)
        return "net.save_weights('params.safetensors')"

    def native_file_keys(self, model: Model) -> dict[str, str]:
        # save_weights writes tree_flatten(net.parameters()): every position of a tie, by its key,
        # in position order (an embedding's table also as a TiedOutput's embedding.weight). A
        # BatchNorm's running statistics are saved too, after its weight and bias: not
        # parameters, so not listed here (a file holding them is refused by name, as torch's
        # state_dict with its buffers is).
        owner = {
            position: name for name, _, positions in self.observed_params(model) for position in positions
        }
        readers = {slot.path for slot in model.spec.dense_slots if slot.table is not None}
        keys = {}
        for slot in model.spec.layer_slots:
            for role in model.spec.roles_at(slot.path):
                key = _native_key(slot.path, role, reads_table=role == "weight" and slot.path in readers)
                keys[key] = owner[param_name(slot.path, role)]
        return keys

    def native_file_budget(self, model: Model) -> int:
        # float32 values and safetensors framing: the values' bytes plus a header allowance.
        shapes = [model.spec.param_shapes[owner] for owner in self.native_file_keys(model).values()]
        return _HEADER_BYTES + sum(4 * math.prod(shape) + _HEADER_BYTES_PER_ENTRY for shape in shapes)

    def read_native_file_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        """mx.load, which parses safetensors and runs nothing (the format named: ``file`` may be a
        descriptor path with no suffix); every entry's name, dtype and shape are checked before
        its data is read. mx.load returns a dict in no file order: entries come in the order
        save_weights writes."""
        expected = self.native_file_keys(model)
        shapes = {key: model.spec.param_shapes[owner] for key, owner in expected.items()}
        arrays = mx.load(file, format="safetensors")  # lazy: no data read yet
        for key, array in arrays.items():
            name = shown(key)
            if key not in shapes:
                raise ParamFileError(
                    f"entry {name} is not a parameter of {shown(model.spec.name)}; "
                    f"expected: {listed(list(expected))}"
                )
            if array.dtype != mx.float32:  # checked before any cast
                raise ParamFileError(f"entry {name}: dtype={array.dtype}, but should be mlx.core.float32")
            if tuple(array.shape) != shapes[key]:
                raise ParamFileError(f"entry {name}: shape={tuple(array.shape)}, but should be {shapes[key]}")
        return [(key, _to_numpy(arrays[key])) for key in expected if key in arrays]
