"""MXNet Gluon adapter: nn.Sequential of nn.Dense(units) with deferred init; a tie is a second
nn.Dense built on the owner's ParameterDict (``params=owner.params``), as D2L 6.2 does.

Like the book we run Gluon in numpy mode (``npx.set_np()``) and feed it ``mxnet.np`` arrays.
Consequence: an unknown dimension shows as -1 (the legacy ``mx.nd`` mode shows 0).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import numpy as np

# MXNet 1.9.1 touches numpy aliases deprecated since numpy 1.20 at import time: dozens of warnings.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import autograd, gluon, npx
    from mxnet import np as mnp  # not "np": that name is the real numpy here
    from mxnet.gluon import nn

from common.core.interface import Backend, GradState, Model, ParamInfo, WeightLayout
from common.core.oracle import Loss
from common.core.spec import ROLES, Block, Dense, LayerPath, ModelSpec, param_name, split_param_name
from common.errors import ParamFileError

__all__ = ["MXNetBackend"]

# (canonical owner name, the Parameter object, every position name that uses that object)
Observed = tuple[str, gluon.Parameter, list[str]]


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class MXNetBackend(Backend):
    name = "mxnet"
    weight_layout = WeightLayout.OUT_IN
    lazy_mechanism = (
        "deferred init: nn.Dense(units) without in_units; weight is (units, -1) until the first forward"
    )
    tie_mechanism = "a second nn.Dense(units, params=owner.params): another layer object, the same Parameters"

    def __init__(self) -> None:
        # set_np() is per-thread global state: models must be built and run on this thread.
        npx.set_np()

    def framework_version(self) -> str:
        return mx.__version__

    def seed(self, seed: int) -> None:
        # Deferred init draws from MXNet's global generator at the first forward.
        mx.random.seed(seed)

    # -- building --------------------------------------------------------------------------------
    def build_mlp(self, spec: ModelSpec) -> Model:
        owners = {slot.path: slot.owner for slot in spec.dense_slots}
        # An explicit prefix keeps native names independent of how many nets were built before.
        net = nn.Sequential(prefix=f"{spec.name}_")
        self._add(net, spec.layers, (), {}, owners)
        net.initialize()
        # The table is read back from the built net, so it holds what the net really holds.
        table = {path: self._index(net, path) for path, _ in spec.walk()}
        return Model(spec, net, {"layers": table})

    def _add(
        self,
        parent: nn.Sequential,
        layers: tuple[Any, ...],
        prefix: LayerPath,
        built: dict[LayerPath, nn.Dense],
        owners: dict[LayerPath, LayerPath],
    ) -> None:
        # Children created in the parent's name_scope are named by a per-block counter.
        with parent.name_scope():
            for index, layer in enumerate(layers):
                path = prefix + (index,)
                if isinstance(layer, Block):
                    child = nn.Sequential()
                    self._add(child, layer.layers, path, built, owners)
                elif isinstance(layer, Dense):
                    owner = owners[path]
                    child = nn.Dense(layer.units) if owner == path else self._tie(built[owner], layer.units)
                    built[path] = child
                else:
                    child = nn.Activation("relu")
                parent.add(child)

    @staticmethod
    def _tie(owner: nn.Dense, units: int) -> nn.Dense:
        # Gluon shares Parameters, not blocks: the new Dense finds weight/bias in owner's dict.
        return nn.Dense(units, params=owner.params)

    @staticmethod
    def _index(net: nn.Sequential, path: LayerPath) -> gluon.Block:
        block = net
        for index in path:
            block = block[index]
        return block

    # -- observation -----------------------------------------------------------------------------
    @staticmethod
    def _dense(model: Model, position: str) -> tuple[nn.Dense, str]:
        path, role = split_param_name(position)
        block = model.state["layers"].get(path)
        if not isinstance(block, nn.Dense):
            raise KeyError(f"{position!r}: no nn.Dense at that position of {model.spec.name!r}")
        return block, role

    def _param(self, model: Model, position: str) -> gluon.Parameter:
        block, role = self._dense(model, position)
        return getattr(block, role)

    @staticmethod
    def _observed(model: Model) -> list[Observed]:
        """Unique Parameters by identity, in walk order; the first position using one names it."""
        seen: dict[int, Observed] = {}
        for path, block in model.state["layers"].items():
            if isinstance(block, nn.Dense):
                for role in ROLES:
                    param, position = getattr(block, role), param_name(path, role)
                    seen.setdefault(id(param), (position, param, []))[2].append(position)
        return list(seen.values())

    @staticmethod
    def _numpy(array: mnp.ndarray) -> np.ndarray:
        return array.asnumpy().astype(np.float32, copy=True)

    # -- primitives ------------------------------------------------------------------------------
    def unbuilt_params(self, model: Model) -> dict[str, str]:
        return {key: str(param.shape) for key, param in model.native.collect_params().items()}

    def materialize(self, model: Model) -> None:
        # Before the first forward, deferred shapes hold a -1 for the unknown input size.
        if any(-1 in param.shape for _, param, _ in self._observed(model)):
            model.native(mnp.zeros((1, model.spec.in_features), dtype="float32"))

    def forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        return self._numpy(model.native(mnp.array(x, dtype="float32")))

    def list_params(self, model: Model) -> tuple[ParamInfo, ...]:
        self.materialize(model)
        names = {id(param): key for key, param in model.native.collect_params().items()}
        return tuple(
            ParamInfo(
                name,
                names[id(param)],
                tuple(param.shape),
                tuple(param.shape),
                np.dtype(param.dtype).name,
                _qualname(param),
                tuple(positions),
            )
            for name, param, positions in self._observed(model)
        )

    def read_native(self, model: Model, position: str) -> np.ndarray:
        return self._numpy(self._param(model, position).data())

    def write_native(self, model: Model, position: str, value: np.ndarray) -> None:
        # set_data writes in place (arr[:] = value), so a shared Parameter shows it everywhere.
        self._param(model, position).set_data(mnp.array(value, dtype="float32"))

    def read_by_native_name(self, model: Model, native_name: str) -> np.ndarray:
        params = model.native.collect_params()
        if native_name not in params.keys():
            raise KeyError(f"{native_name!r} is not in net.collect_params()")
        return self._numpy(params[native_name].data())

    def native_type(self, model: Model, position: str) -> str:
        return _qualname(self._param(model, position))

    def grad_state_before_backward(self, model: Model) -> str:
        # Read off a fresh twin, so the answer is about "before backward" whatever model has seen.
        fresh = self.build_mlp(model.spec)
        self.materialize(fresh)
        states = set()
        for name, param, _ in self._observed(fresh):
            if param.grad_req == "null":
                states.add(GradState.NOT_STORED)
            elif not param.grad().asnumpy().any():
                states.add(GradState.ZEROS)  # Gluon allocates the grad buffer at init, zeroed
            else:
                raise RuntimeError(f"{name}: nonzero gradient before any backward pass")
        if len(states) != 1:
            raise RuntimeError(f"parameters disagree on their gradient state: {sorted(states)}")
        return states.pop()

    def _record_loss(self, model: Model, x: np.ndarray, loss: Loss) -> mnp.ndarray:
        """Forward and loss under autograd, then backward; grad_req='write' overwrites old grads."""
        with autograd.record():
            y = model.native(mnp.array(x, dtype="float32"))
            if loss.kind == "sum":
                value = y.sum()
            else:
                value = ((y - mnp.array(loss.target, dtype="float32")) ** 2).mean()
        value.backward()
        return value

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        self._record_loss(model, x, loss)
        # A shared Parameter is one autograd variable, so its grad is already the sum over uses.
        return {name: self._numpy(param.grad()) for name, param, _ in self._observed(model)}

    def native_sgd_step(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        trainer = model.state.get("trainer")
        if trainer is None:
            # Unique Parameters only, so a shared one is updated once per step.
            params = [param for _, param, _ in self._observed(model)]
            trainer = model.state["trainer"] = gluon.Trainer(params, "sgd", {"learning_rate": lr})
        trainer.set_learning_rate(lr)
        value = self._record_loss(model, x, loss)
        grads = {name: self._numpy(param.grad()) for name, param, _ in self._observed(model)}
        trainer.step(1)  # step(batch_size) rescales grads by 1/batch_size; 1 keeps update = lr*grad
        return float(value.item()), grads

    def save_native_file(self, model: Model, path: str) -> str:
        self.materialize(model)
        model.native.save_parameters(path + ".params")
        return "net.save_parameters(path + '.params')"

    def load_native_file(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        # npx.load reads MXNet's binary NDArray format (no pickle); its dict keeps file order.
        stored = npx.load(path + ".params")
        self.materialize(model)
        canonical = {id(param): name for name, param, _ in self._observed(model)}
        # save_parameters keys entries by _collect_params_with_prefix(), e.g. "0.weight".
        owners = {
            key: canonical[id(param)] for key, param in model.native._collect_params_with_prefix().items()
        }
        values: dict[str, np.ndarray] = {}
        for key, array in stored.items():
            if key not in owners:
                raise ParamFileError(
                    f"{path}.params: entry {key!r} is not a parameter of "
                    f"{model.spec.name!r}; expected: {', '.join(owners)}"
                )
            value = self._numpy(array)
            owner = owners[key]
            if owner in values and not np.array_equal(values[owner], value):
                raise ParamFileError(
                    f"{path}.params: entry {key!r} differs from another stored copy of {owner}"
                )
            values[owner] = value
        return list(stored), values

    def native_facts(self, model: Model) -> dict[str, Any]:
        self.materialize(model)
        net = model.native
        children = list(net._children.values())
        tie_identity: dict[str, bool] = {}
        if model.spec.ties:
            first, second = model.spec.ties[0][:2]
            table = model.state["layers"]
            tie_identity = {
                "same layer object": table[first] is table[second],
                "same parameter object": table[first].weight is table[second].weight,
            }
        return {
            "listing_call": "net.collect_params()",
            "listing_names": list(net.collect_params().keys()),
            "layer_list_call": "net._children",
            "layer_list_length": len(children),
            "unique_layer_objects": len({id(child) for child in children}),
            "serializations": {
                "_collect_params_with_prefix() (what save_parameters writes)": list(
                    net._collect_params_with_prefix()
                ),
                "save_parameters(deduplicate=True)": self._saved_names(net, deduplicate=True),
            },
            "tie_identity": tie_identity,
        }

    @staticmethod
    def _saved_names(net: nn.Sequential, *, deduplicate: bool) -> list[str]:
        """The entry names save_parameters really writes, read back from a scratch file."""
        with tempfile.TemporaryDirectory() as folder:
            file = os.path.join(folder, "net.params")
            net.save_parameters(file, deduplicate=deduplicate)
            return list(npx.load(file))
