"""MXNet Gluon adapter: nn.HybridSequential of nn.Dense(units) with deferred init; a tie is a
second nn.Dense built on the owner's ParameterDict (``params=owner.params``), as D2L 6.2 does.
A BatchNorm is nn.BatchNorm(momentum, epsilon): gamma and beta are its weight and bias, its
running_mean and running_var are Parameters with grad_req 'null' that collect_params() lists
beside the others; a tied BatchNorm is the same block at both positions. Freezing is Gluon's
``grad_req = 'null'``: no gradient is kept, so neither autograd nor the Trainer touches it.
An Embedding is nn.Embedding(vocab, dim), its table the Parameter ``weight`` of shape (vocab,
dim); a Dense tied to it is ``nn.Dense(vocab, in_units=dim, params=emb.params)``, as GluonNLP ties
a language model's decoder: the new Dense finds ``weight`` in the embedding's ParameterDict, so
it holds the table's very Parameter ((vocab, dim) is Dense's (out, in)), and creates its own
bias there, which Gluon therefore names after the embedding (``embedding0_bias``).

Like the book we run Gluon in numpy mode (``npx.set_np()``) and feed it ``mxnet.np`` arrays.
Consequence: an unknown dimension shows as -1 (the legacy ``mx.nd`` mode shows 0).
Fast path: the net and its loss as one hybridized block (one cached graph per model and loss
kind) with gluon.Trainer's SGD; losses and watched gradients stay MXNet arrays until the last step.

Training mode is autograd's: a call inside ``autograd.record()`` normalizes by the batch, outside it
by the running statistics. MXNet's BatchNorm operator writes its running statistics in its
*backward* pass (``_backward_BatchNorm`` blends the mean and the variance its forward saved into
running_mean/var), never in its forward, hybridized or not: a forward inside ``record()`` alone
leaves them as they were. So a training forward here is a recorded forward and the backward a
training step would run (its gradients discarded), and a BatchNorm that no gradient passes
through (nothing trainable before it, and frozen itself) keeps its statistics.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# MXNet 1.9.1 touches numpy aliases deprecated since numpy 1.20 at import time: dozens of warnings.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import autograd, gluon, npx
    from mxnet import np as mnp  # not "np": that name is the real numpy here
    from mxnet.gluon import nn

from common.core.interface import NOT_STORED, Backend, Model
from common.core.oracle import Loss
from common.core.spec import LayerPath, ModelSpec

__all__ = ["MXNetBackend"]


# The Parameter attribute behind each canonical role: a BatchNorm's scale and shift are gamma, beta.
_ATTRIBUTES: dict[type, dict[str, str]] = {
    nn.Dense: {"weight": "weight", "bias": "bias"},
    nn.BatchNorm: {"weight": "gamma", "bias": "beta"},
    nn.Embedding: {"weight": "weight"},
}


def _numpy(array: mnp.ndarray) -> np.ndarray:
    return array.asnumpy().astype(np.float32, copy=True)


class _Objective(gluon.HybridBlock):
    """The net and its loss as one HybridBlock, so hybridize() caches the whole forward as one
    graph. ``hybrid_forward`` runs per call only when not hybridized; hybridized, once per trace."""

    def __init__(self, net: nn.HybridSequential, kind: str, on_trace: Callable[[], None]) -> None:
        super().__init__(prefix="objective_")
        self._kind, self._on_trace = kind, on_trace
        self.net = net  # a registered child: the cached graph finds its Parameters by name

    def hybrid_forward(self, F: Any, x: Any, *target: Any) -> Any:
        self._on_trace()
        y = self.net(x)
        return y.sum() if self._kind == "sum" else ((y - target[0]) ** 2).mean()


@dataclass
class MXNetState:
    native_names: dict[int, str] | None = None  # id(Parameter) -> its collect_params() key


class MXNetBackend(Backend):
    name = "mxnet"
    lazy_mechanism = (
        "deferred init: nn.Dense(units) without in_units; weight is (units, -1) until the first forward"
    )
    tie_mechanism = "a second nn.Dense(units, params=owner.params): another layer object, the same Parameters"
    native_file_suffix = ".params"

    def __init__(self) -> None:
        # set_np() is per-thread global state: models must be built and run on this thread.
        npx.set_np()
        # How many Dense layers already read each embedding's table (see tied_output).
        self._table_readers: weakref.WeakKeyDictionary[nn.Embedding, int] = weakref.WeakKeyDictionary()

    def framework_version(self) -> str:
        return mx.__version__

    def new_adapter_state(self) -> MXNetState:
        return MXNetState()

    def available_devices(self) -> dict[str, str]:
        cuda = "" if mx.runtime.Features().is_enabled("CUDA") else f"mxnet {mx.__version__} is a CPU build"
        return {"cpu": "", "cuda": cuda or "this adapter places models on the CPU only"}

    def param_location(self, model: Model, position: str) -> tuple[str, int]:
        # The NDArray handle: one per buffer a Parameter owns, so a tie shows one handle.
        data = self.param_object(model, position).data()
        return data.ctx.device_type, data.handle.value

    def seed(self, seed: int) -> None:
        # Deferred init draws from MXNet's global generator at the first forward.
        mx.random.seed(seed)

    # -- building --------------------------------------------------------------------------------
    def new_sequential(self, spec: ModelSpec, path: LayerPath) -> nn.HybridSequential:
        # An explicit root prefix keeps native names independent of how many nets were built
        # before; a nested one is named by its parent's name_scope counter (hybridsequential0_).
        return nn.HybridSequential(prefix=f"{spec.name}_") if path == () else nn.HybridSequential()

    def children_scope(self, container: nn.HybridSequential) -> contextlib.AbstractContextManager:
        # Children created in the parent's name_scope are named by a per-block counter.
        return container.name_scope()

    def new_dense(self, units: int, in_features: int) -> nn.Dense:
        return nn.Dense(units)  # no in_units: deferred init, like the book

    def share_dense(self, owner: nn.Dense, units: int) -> nn.Dense:
        # Gluon shares Parameters, not blocks: the new Dense finds weight/bias in owner's dict.
        return nn.Dense(units, params=owner.params)

    def new_relu(self) -> nn.HybridBlock:
        return nn.Activation("relu")

    def new_embedding(self, vocab: int, dim: int) -> nn.Embedding:
        return nn.Embedding(vocab, dim)  # shapes known: initialized by net.initialize(), not deferred

    def tied_output(self, embedding: nn.Embedding, units: int) -> nn.Dense:
        # Gluon shares Parameters by name through a ParameterDict: built on the embedding's, the
        # Dense finds the table as its "weight" and makes its own "bias" under the embedding's
        # prefix. A second reader would make a second "<embedding>bias", which collect_params()
        # refuses (two Parameters, one name), so it gets a dict of its own prefix holding the
        # table under that prefix's "weight": one more name for the same Parameter. Gluon warns
        # about that name, harmlessly: initialize() that it is "already initialized", hybridize
        # that it "is not used by any computation" (its graph uses the Parameter's own name).
        readers = self._table_readers.get(embedding, 0)
        self._table_readers[embedding] = readers + 1
        params = embedding.params
        if readers:
            params = gluon.ParameterDict(f"{embedding.prefix}tied{readers}_")
            params.update({f"{params.prefix}weight": embedding.weight})
        return nn.Dense(units, in_units=embedding.weight.shape[1], params=params)

    def new_batchnorm(self, features: int, momentum: float | None, eps: float | None) -> nn.BatchNorm:
        # Gluon's momentum is the weight of the old running value: canonical m is 1 - m here.
        settings = {"momentum": None if momentum is None else 1.0 - momentum, "epsilon": eps}
        return nn.BatchNorm(**{k: v for k, v in settings.items() if v is not None})  # deferred init

    def share_batchnorm(self, owner: nn.BatchNorm) -> nn.BatchNorm:
        # The same block at both positions: its four Parameters, running statistics included, are
        # one set (a second nn.BatchNorm(params=owner.params) would share them too, but would
        # have to copy the owner's momentum and epsilon from its private _kwargs).
        return owner

    def freeze(self, model: Model, path: LayerPath) -> None:
        # Before the first forward (deferred init) this only records the request: no grad
        # buffer is ever allocated, and the cached graph is built without one.
        layer = self.position_table(model)[path]
        for role in model.spec.roles_at(path):
            getattr(layer, _ATTRIBUTES[type(layer)][role]).grad_req = "null"

    def finish_sequential(self, container: nn.HybridSequential, children: list[Any]) -> nn.HybridSequential:
        container.add(*children)
        return container

    def child(self, container: nn.HybridSequential, index: int) -> gluon.Block:
        return container[index]

    def finish_model(self, model: Model) -> None:
        model.native.initialize()
        # A cached graph per net; hybridizing does not change which Parameter objects it holds.
        model.native.hybridize()

    # -- observing -------------------------------------------------------------------------------
    def param_object(self, model: Model, position: str) -> gluon.Parameter:
        layer, role = self.dense_layer(model, position, tuple(_ATTRIBUTES))
        return getattr(layer, _ATTRIBUTES[type(layer)][role])

    def describe_param(self, model: Model, param: Any) -> tuple[str, tuple[int, ...], str]:
        # Parameter objects keep their identity through deferred init, so one table serves.
        state: MXNetState = model.adapter_state
        if state.native_names is None:
            # A table read by several Dense layers has one name per reader after the first: its first.
            state.native_names = {}
            for key, p in model.native.collect_params().items():
                state.native_names.setdefault(id(p), key)
        return state.native_names[id(param)], tuple(param.shape), np.dtype(param.dtype).name

    # -- state: BatchNorm's running statistics are Parameters with grad_req 'null' ---------------
    def state_object(self, model: Model, position: str) -> gluon.Parameter:
        layer, role = self.batchnorm_layer(model, position, nn.BatchNorm)
        return getattr(layer, role)  # Gluon's own names: running_mean, running_var

    def describe_state(self, model: Model, state: Any) -> tuple[str, tuple[int, ...], str]:
        return self.describe_param(model, state)  # listed by collect_params(), as parameters are

    def native_state_value(self, model: Model, position: str) -> np.ndarray:
        # BatchNorm's backward writes the running statistics, and MXNet's engine does not order a
        # read of them after that write: read at once, running_mean after two training steps of a
        # process's first model was still the value after one (found by make bench's check). So
        # every pending operation ends first.
        npx.waitall()
        return _numpy(self.state_object(model, position).data())

    def write_native_state_value(self, model: Model, position: str, value: np.ndarray) -> None:
        self._write(self.state_object(model, position), position, value)

    def state_listing(self, model: Model) -> tuple[str, list[str]]:
        # Gluon has no listing of state apart: collect_params() holds it among the parameters,
        # told apart only by grad_req 'null' (which a frozen parameter has too).
        return self.listing(model)

    def unbuilt_params(self, model: Model) -> dict[str, str]:
        return {key: str(param.shape) for key, param in model.native.collect_params().items()}

    def materialize(self, model: Model) -> None:
        # Before the first forward, deferred shapes hold a -1 for the unknown input size.
        if any(-1 in param.shape for _, param, _ in self.observed_params(model)):
            ids = model.spec.input_kind == "ids"
            model.native(self._array(model, np.zeros(1 if ids else (1, model.spec.in_features))))

    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        # Outside autograd.record(), Gluon predicts: BatchNorm uses its running statistics.
        return _numpy(model.native(self._array(model, x)))

    def native_forward_training(self, model: Model, x: np.ndarray) -> np.ndarray:
        trainable = [param.data() for _, param in self._trainable(model)]
        with autograd.record():  # train_mode: batch statistics
            y = model.native(self._array(model, x))
        if trainable:
            # The running statistics move in BatchNorm's backward: run the one a training step
            # would, with zero head gradients, returning the gradients rather than writing .grad.
            autograd.grad(y, trainable, head_grads=mnp.zeros_like(y), retain_graph=False)
        return _numpy(y)

    def native_value(self, model: Model, position: str) -> np.ndarray:
        return _numpy(self.param_object(model, position).data())

    def write_native_value(self, model: Model, position: str, value: np.ndarray) -> None:
        self._write(self.param_object(model, position), position, value)

    @staticmethod
    def _write(param: gluon.Parameter, position: str, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float32)
        if tuple(param.shape) != value.shape:  # set_data would broadcast silently
            raise ValueError(f"{position}: shape={value.shape}, but should be {tuple(param.shape)}")
        # set_data writes in place (arr[:] = value), so a shared Parameter and the cached graph see it.
        param.set_data(mnp.array(value, dtype="float32"))

    def native_value_by_name(self, model: Model, native_name: str) -> np.ndarray:
        params = model.native.collect_params()
        if native_name not in params.keys():
            raise KeyError(f"{native_name!r} is not in net.collect_params()")
        return _numpy(params[native_name].data())

    def stored_grad(self, model: Model, param: Any) -> Any:
        # Gluon allocates the grad buffer at init, zeroed; grad_req "null" means none is kept.
        return NOT_STORED if param.grad_req == "null" else param.grad()

    # -- facts -----------------------------------------------------------------------------------
    def listing(self, model: Model) -> tuple[str, list[str]]:
        return "net.collect_params()", list(model.native.collect_params().keys())

    def layer_list(self, model: Model) -> tuple[str, list[Any]]:
        return "net._children", list(model.native._children.values())

    def serializations(self, model: Model) -> dict[str, list[str]]:
        net = model.native
        return {
            "_collect_params_with_prefix() (what save_parameters writes)": list(
                net._collect_params_with_prefix()
            ),
            "save_parameters(deduplicate=True)": self._saved_names(net, deduplicate=True),
        }

    @staticmethod
    def _saved_names(net: nn.HybridSequential, *, deduplicate: bool) -> list[str]:
        """The entry names save_parameters really writes, read back from a scratch file."""
        with tempfile.TemporaryDirectory() as folder:
            file = os.path.join(folder, "net.params")
            net.save_parameters(file, deduplicate=deduplicate)
            return list(npx.load(file))

    # -- gradients and training ------------------------------------------------------------------
    def _objective(self, model: Model, kind: str) -> _Objective:
        def make() -> _Objective:
            objective = _Objective(model.native, kind, lambda: self.note_trace(model))
            # static_alloc/static_shape: buffers planned once for the step's fixed shapes.
            objective.hybridize(static_alloc=True, static_shape=True)
            return objective

        return self.compiled(model, ("objective", kind), make)

    def _record_loss(self, model: Model, inputs: mnp.ndarray, loss: Loss, target: tuple) -> mnp.ndarray:
        """Forward and loss under autograd, then backward; grad_req 'write' overwrites old grads."""
        objective = self._objective(model, loss.kind)
        with autograd.record():
            value = objective(inputs, *target)
        value.backward()
        return value

    @staticmethod
    def _array(model: Model, x: np.ndarray) -> mnp.ndarray:
        """The model's input as MXNet takes it: int64 ids for an embedding (its index type), else float32."""
        return mnp.array(x, dtype="int64" if model.spec.input_kind == "ids" else "float32")

    def _inputs(self, model: Model, x: np.ndarray, loss: Loss) -> tuple[mnp.ndarray, tuple]:
        target = () if loss.kind == "sum" else (mnp.array(loss.target, dtype="float32"),)
        return self._array(model, x), target

    def _trainable(self, model: Model) -> list[tuple[str, gluon.Parameter]]:
        """Unique Parameters that keep a gradient: a frozen one has grad_req 'null'."""
        return [(name, param) for name, param, _ in self.observed_params(model) if param.grad_req != "null"]

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        inputs, target = self._inputs(model, x, loss)
        self._record_loss(model, inputs, loss, target)
        # A shared Parameter is one autograd variable, so its grad is already the sum over uses;
        # a frozen one (grad_req 'null') keeps none.
        return {name: _numpy(param.grad()) for name, param in self._trainable(model)}

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        unique = self._trainable(model)
        # Unique trainable Parameters only, so a shared one is updated once per step.
        trainer = self.compiled(
            model,
            "trainer",
            lambda: gluon.Trainer([p for _, p in unique], "sgd", {"learning_rate": lr}),
        )
        trainer.set_learning_rate(lr)
        inputs, target = self._inputs(model, x, loss)
        losses, grads = [], {name: [] for name, _ in unique}
        for _ in range(steps):
            losses.append(self._record_loss(model, inputs, loss, target))
            if watch:
                for name, param in unique:
                    grads[name].append(param.grad().copy())
            trainer.step(1)  # step(batch_size) rescales grads by 1/batch_size; 1 keeps update = lr*grad
        stacked = {name: mnp.stack(g).asnumpy() for name, g in grads.items()} if watch else {}
        return mnp.stack(losses).asnumpy().astype(np.float64), stacked

    # -- files -----------------------------------------------------------------------------------
    def write_native_file(self, model: Model, file: str) -> str:
        self.materialize(model)
        model.native.save_parameters(file)
        return "net.save_parameters(path + '.params')"

    def native_file_keys(self, model: Model) -> dict[str, str]:
        # save_parameters keys entries by _collect_params_with_prefix(), e.g. "0.weight"; a tie
        # reaches the owner's Parameter through its own index, so it is stored twice.
        # Running statistics are saved too ("1.running_mean"): not parameters, so not listed here
        # (a file holding them is refused by name, as torch's state_dict with its buffers is).
        canonical = {id(param): name for name, param, _ in self.observed_params(model)}
        stored = model.native._collect_params_with_prefix()
        return {key: canonical[id(param)] for key, param in stored.items() if id(param) in canonical}

    def read_native_file_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        # npx.load reads MXNet's binary NDArray format (no pickle); its dict keeps file order.
        # Values keep the file's dtype, for the caller's float32 rule: no silent cast here.
        return [(key, array.asnumpy()) for key, array in npx.load(file).items()]
