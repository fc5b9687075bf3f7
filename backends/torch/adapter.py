"""PyTorch adapter: nn.Sequential of nn.LazyLinear / nn.ReLU, ties by reusing one module object.

Every position is read through the module found at that position, and sharing is decided by
object identity, so a tie is observed, never assumed from the spec.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from common.core.interface import Backend, GradState, Model, ParamInfo, WeightLayout
from common.core.oracle import Loss
from common.core.spec import (
    ROLES,
    Block,
    Dense,
    Layer,
    LayerPath,
    ModelSpec,
    param_name,
    split_param_name,
)
from common.errors import ParamFileError

_INIT_SEED = 0


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # .numpy() shares memory with the tensor; copy so later in-place updates don't leak out.
    return tensor.detach().cpu().numpy().astype(np.float32, copy=True)


class TorchBackend(Backend):
    name = "torch"
    weight_layout = WeightLayout.OUT_IN
    lazy_mechanism = "nn.LazyLinear: shapes set at first forward"
    tie_mechanism = "the same nn.Module object at both positions"

    def framework_version(self) -> str:
        return str(torch.__version__)

    # -- building --------------------------------------------------------------------------------
    def build_mlp(self, spec: ModelSpec) -> Model:
        owners = {slot.path: slot.owner for slot in spec.dense_slots}
        net = self._sequential(spec.layers, (), owners, {})
        layers = {}
        for path, _ in spec.walk():
            module = net
            for index in path:  # nn.Sequential indexing: the module object at this position
                module = module[index]
            layers[path] = module
        return Model(spec, net, {"layers": layers})

    def _sequential(
        self,
        layers: tuple[Layer, ...],
        prefix: LayerPath,
        owners: dict[LayerPath, LayerPath],
        made: dict[LayerPath, nn.Module],
    ) -> nn.Sequential:
        modules: list[nn.Module] = []
        for index, layer in enumerate(layers):
            path = prefix + (index,)
            if isinstance(layer, Block):
                modules.append(self._sequential(layer.layers, path, owners, made))
            elif isinstance(layer, Dense):
                owner = owners[path]
                if owner == path:
                    made[path] = nn.LazyLinear(layer.units)
                modules.append(made[owner])  # a tie is the very same module object
            else:
                modules.append(nn.ReLU())
        return nn.Sequential(*modules)

    def unbuilt_params(self, model: Model) -> dict[str, str]:
        # An UninitializedParameter has no shape (.shape raises); its repr is what torch shows.
        return {
            name: repr(p) if isinstance(p, UninitializedParameter) else str(tuple(p.shape))
            for name, p in model.native.named_parameters()
        }

    def materialize(self, model: Model) -> None:
        if any(isinstance(p, UninitializedParameter) for p in model.native.parameters()):
            # LazyLinear draws its default init at the first forward; seed it, locally.
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(_INIT_SEED)
                model.native(torch.zeros(1, model.spec.in_features))

    def forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)
        with torch.no_grad():
            return _to_numpy(model.native(self._tensor(x)))

    # -- access by position ----------------------------------------------------------------------
    def _param(self, model: Model, position: str) -> nn.Parameter:
        model.spec.owner_of(position)  # KeyError naming ``position`` unless it is a Dense position
        path, role = split_param_name(position)
        module = model.state["layers"][path]
        if not isinstance(module, nn.Linear):
            raise KeyError(f"{position!r}: module at {path} is {_qualname(module)}, not nn.Linear")
        return getattr(module, role)

    def read_native(self, model: Model, position: str) -> np.ndarray:
        return _to_numpy(self._param(model, position))

    def write_native(self, model: Model, position: str, value: np.ndarray) -> None:
        param = self._param(model, position)
        value = np.asarray(value, dtype=np.float32)
        if tuple(param.shape) != value.shape:  # copy_ would broadcast silently
            raise ValueError(f"{position}: shape={value.shape}, but should be {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(torch.from_numpy(value))

    def read_by_native_name(self, model: Model, native_name: str) -> np.ndarray:
        try:
            return _to_numpy(model.native.get_parameter(native_name))
        except AttributeError as error:
            raise KeyError(f"{native_name!r}: {error}") from None

    def native_type(self, model: Model, position: str) -> str:
        return _qualname(self._param(model, position))

    def _unique(self, model: Model) -> list[tuple[str, nn.Parameter, list[str]]]:
        """(canonical owner name, parameter, positions) per distinct Parameter, in walk order."""
        seen: dict[int, tuple[str, nn.Parameter, list[str]]] = {}
        for slot in model.spec.dense_slots:
            for role in ROLES:
                position = param_name(slot.path, role)
                param = self._param(model, position)
                seen.setdefault(id(param), (position, param, []))[2].append(position)
        return list(seen.values())

    def list_params(self, model: Model) -> tuple[ParamInfo, ...]:
        self.materialize(model)
        native_names = {id(p): name for name, p in model.native.named_parameters()}
        return tuple(
            ParamInfo(
                name=name,
                native_name=native_names[id(p)],
                native_shape=tuple(p.shape),
                shape=tuple(p.shape),
                dtype=str(p.dtype).removeprefix("torch."),
                native_class=_qualname(p),
                positions=tuple(positions),
            )
            for name, p, positions in self._unique(model)
        )

    # -- gradients -------------------------------------------------------------------------------
    def grad_state_before_backward(self, model: Model) -> str:
        # Read off a fresh model of the same spec: earlier backward calls on ``model`` don't count.
        fresh = self.build_mlp(model.spec)
        self.materialize(fresh)
        grads = [p.grad for p in fresh.native.parameters()]
        if all(g is None for g in grads):
            return GradState.NONE
        if all(g is not None and not torch.any(g) for g in grads):
            return GradState.ZEROS
        raise RuntimeError(f"unexpected .grad before backward: {[type(g).__name__ for g in grads]}")

    @staticmethod
    def _tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def _loss(self, model: Model, x: np.ndarray, loss: Loss) -> torch.Tensor:
        y = model.native(self._tensor(x))
        if loss.kind == "sum":
            return y.sum()
        return ((y - self._tensor(loss.target)) ** 2).mean()

    def _grads(self, model: Model) -> dict[str, np.ndarray]:
        # A shared Parameter has one .grad, into which autograd already summed every use.
        return {name: _to_numpy(p.grad) for name, p, _ in self._unique(model)}

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        model.native.zero_grad(set_to_none=True)  # .grad accumulates across backward calls
        self._loss(model, x, loss).backward()
        return self._grads(model)

    def native_sgd_step(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        optimizer = model.state.get("sgd")
        if optimizer is None:
            # net.parameters() yields a shared Parameter once, so SGD updates it once per step.
            optimizer = model.state["sgd"] = torch.optim.SGD(model.native.parameters(), lr=lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        value = self._loss(model, x, loss)
        value.backward()
        grads = self._grads(model)
        optimizer.step()
        return float(value.item()), grads

    # -- facts and files -------------------------------------------------------------------------
    def native_facts(self, model: Model) -> dict[str, Any]:
        self.materialize(model)
        net = model.native
        children = list(net)
        tie_identity: dict[str, bool] = {}
        if model.spec.ties:
            modules = [model.state["layers"][path] for path in model.spec.ties[0]]
            params = [[getattr(m, role) for m in modules] for role in ROLES]
            tie_identity = {
                "same layer object": all(m is modules[0] for m in modules),
                "same parameter object": all(p is group[0] for group in params for p in group),
            }
        return {
            "listing_call": "net.named_parameters()",
            "listing_names": [name for name, _ in net.named_parameters()],
            "layer_list_call": "list(net)",
            "layer_list_length": len(children),
            "unique_layer_objects": len({id(m) for m in children}),
            "serializations": {
                "state_dict()": list(net.state_dict()),
                "named_parameters(remove_duplicate=False)": [
                    name for name, _ in net.named_parameters(remove_duplicate=False)
                ],
            },
            "tie_identity": tie_identity,
        }

    def save_native_file(self, model: Model, path: str) -> str:
        self.materialize(model)
        torch.save(model.native.state_dict(), path + ".pt")
        return "torch.save(net.state_dict())"

    def load_native_file(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        # weights_only=True: torch's restricted unpickler, which runs no code from the file.
        state = torch.load(path + ".pt", map_location="cpu", weights_only=True)
        # state_dict keys follow nn.Sequential's child names: position (0, 1) -> "0.1.weight".
        by_key = {}
        for name, _, positions in self._unique(model):
            for position in positions:
                layer_path, role = split_param_name(position)
                by_key[".".join([*map(str, layer_path), role])] = name
        values: dict[str, np.ndarray] = {}
        for key, tensor in state.items():
            if key not in by_key:
                raise ParamFileError(
                    f"{path}.pt: entry {key!r} is not a parameter of "
                    f"{model.spec.name!r}; expected: {', '.join(by_key)}"
                )
            name, value = by_key[key], _to_numpy(tensor)
            if name in values and not np.array_equal(values[name], value):
                raise ParamFileError(f"{path}.pt: {key!r} differs from another entry of {name}")
            values[name] = value
        return list(state), values
