"""PyTorch adapter: nn.Sequential of nn.LazyLinear / nn.ReLU, ties by reusing one module object.
An Embedding is nn.Embedding(vocab, dim); a Dense tied to its table is an nn.Linear(dim, vocab)
whose weight is set to the embedding's Parameter (``head.weight = emb.weight``, as language
models tie their output head): both layers hold one Parameter, so autograd sums both uses into
its one .grad, and the optimizer updates it once.

Every position is read through the module found at that position, and sharing is decided by
object identity (common.core.interface), so a tie is observed, never assumed from the spec.
Fast path: eager autograd with torch.optim.SGD, as a practitioner writes it; losses and watched
gradients stay tensors until the last step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from common.core.interface import Backend, Model
from common.core.oracle import Loss
from common.core.spec import LayerPath
from common.core.untrusted import printable
from common.errors import ParamFileError

_INIT_SEED = 0


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # .numpy() shares memory with the tensor; copy so later in-place updates don't leak out.
    return tensor.detach().cpu().numpy().astype(np.float32, copy=True)


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """Default initial values drawn from a fixed seed, without touching the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        yield


@dataclass
class TorchState:
    native_names: dict[int, str] | None = None  # id(Parameter) -> its named_parameters() name


class TorchBackend(Backend):
    name = "torch"
    lazy_mechanism = "nn.LazyLinear: shapes set at first forward"
    tie_mechanism = "the same nn.Module object at both positions"
    native_file_suffix = ".pt"

    def framework_version(self) -> str:
        return str(torch.__version__)

    def new_adapter_state(self) -> TorchState:
        return TorchState()

    # -- devices ---------------------------------------------------------------------------------
    def available_devices(self) -> dict[str, str]:
        cuda = "" if torch.cuda.is_available() else f"no CUDA device (torch {torch.__version__} sees none)"
        return {"cpu": "", "cuda": cuda}

    def param_location(self, model: Model, position: str) -> tuple[str, int]:
        param = self.param_object(model, position)
        return param.device.type, param.data_ptr()

    # -- building --------------------------------------------------------------------------------
    def new_dense(self, units: int, in_features: int) -> nn.Module:
        return nn.LazyLinear(units)

    def new_relu(self) -> nn.Module:
        return nn.ReLU()

    def new_embedding(self, vocab: int, dim: int) -> nn.Embedding:
        with _seeded():  # eager: the table is drawn here, not at the first forward
            return nn.Embedding(vocab, dim)

    def tied_output(self, embedding: nn.Embedding, units: int) -> nn.Linear:
        with _seeded():
            head = nn.Linear(embedding.embedding_dim, units)
        # The idiom: the head's weight IS the table's Parameter, (vocab, dim) = Linear's (out, in).
        head.weight = embedding.weight
        return head

    def new_batchnorm(self, features: int, momentum: float | None, eps: float | None) -> nn.Module:
        # torch's momentum is the canonical one: the weight of the new batch.
        settings = {k: v for k, v in {"momentum": momentum, "eps": eps}.items() if v is not None}
        return nn.BatchNorm1d(features, **settings)

    def freeze(self, model: Model, path: LayerPath) -> None:
        self.ensure_built(model)  # an UninitializedParameter refuses requires_grad_
        self.position_table(model)[path].requires_grad_(False)

    def finish_sequential(self, container: Any, children: list[Any]) -> nn.Sequential:
        return nn.Sequential(*children)

    def child(self, container: nn.Sequential, index: int) -> nn.Module:
        return container[index]

    def unbuilt_params(self, model: Model) -> dict[str, str]:
        # An UninitializedParameter has no shape (.shape raises); its repr is what torch shows.
        return {
            name: repr(p) if isinstance(p, UninitializedParameter) else str(tuple(p.shape))
            for name, p in model.native.named_parameters()
        }

    def finish_model(self, model: Model) -> None:
        # A model with no lazy layer (an embedding and its tied head only) is complete now.
        if not self._lazy(model):
            model.native.to(self.device)

    @staticmethod
    def _lazy(model: Model) -> bool:
        return any(isinstance(p, UninitializedParameter) for p in model.native.parameters())

    def materialize(self, model: Model) -> None:
        if self._lazy(model):
            # LazyLinear draws its default init at the first forward; seed it, locally.
            with _seeded(), torch.no_grad():
                model.native.eval()  # a BatchNorm keeps its statistics (and takes a batch of one)
                ids = model.spec.input_kind == "ids"
                zeros = torch.zeros(1, dtype=torch.long) if ids else torch.zeros(1, model.spec.in_features)
                model.native(zeros)
            # Initialised on the CPU, so every device starts from the same values; .to() keeps
            # each Parameter object (it swaps .data), so ties and the identity tables survive.
            model.native.to(self.device)

    def native_forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)
        model.native.eval()  # inference: BatchNorm uses its running statistics
        with torch.no_grad():
            return _to_numpy(model.native(self._native_input(model, x)))

    def native_forward_training(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)
        model.native.train()  # batch statistics, running statistics updated
        with torch.no_grad():
            return _to_numpy(model.native(self._native_input(model, x)))

    # -- access by position ----------------------------------------------------------------------
    def param_object(self, model: Model, position: str) -> nn.Parameter:
        # A tied head's weight is the embedding's Parameter itself: the same object at both.
        layer, role = self.dense_layer(model, position, (nn.Embedding, nn.Linear, nn.BatchNorm1d))
        return getattr(layer, role)

    # -- state: BatchNorm's running statistics are buffers ----------------------------------------
    def state_object(self, model: Model, position: str) -> torch.Tensor:
        layer, role = self.batchnorm_layer(model, position, nn.BatchNorm1d)
        return getattr(layer, role)

    def describe_state(self, model: Model, state: Any) -> tuple[str, tuple[int, ...], str]:
        names = {id(b): name for name, b in model.native.named_buffers()}
        return names[id(state)], tuple(state.shape), str(state.dtype).removeprefix("torch.")

    def native_state_value(self, model: Model, position: str) -> np.ndarray:
        return _to_numpy(self.state_object(model, position))

    def write_native_state_value(self, model: Model, position: str, value: np.ndarray) -> None:
        buffer = self.state_object(model, position)
        value = np.asarray(value, dtype=np.float32)
        if tuple(buffer.shape) != value.shape:
            raise ValueError(f"{position}: shape={value.shape}, but should be {tuple(buffer.shape)}")
        with torch.no_grad():
            buffer.copy_(torch.from_numpy(value))

    def state_listing(self, model: Model) -> tuple[str, list[str]]:
        return "net.named_buffers()", [name for name, _ in model.native.named_buffers()]

    def describe_param(self, model: Model, param: Any) -> tuple[str, tuple[int, ...], str]:
        # Parameter objects keep their identity when LazyLinear materializes, so one table serves.
        state: TorchState = model.adapter_state
        if state.native_names is None:
            state.native_names = {id(p): name for name, p in model.native.named_parameters()}
        return (
            state.native_names[id(param)],
            tuple(param.shape),
            str(param.dtype).removeprefix("torch."),
        )

    def native_value(self, model: Model, position: str) -> np.ndarray:
        return _to_numpy(self.param_object(model, position))

    def write_native_value(self, model: Model, position: str, value: np.ndarray) -> None:
        param = self.param_object(model, position)
        value = np.asarray(value, dtype=np.float32)
        if tuple(param.shape) != value.shape:  # copy_ would broadcast silently
            raise ValueError(f"{position}: shape={value.shape}, but should be {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(torch.from_numpy(value))

    def native_value_by_name(self, model: Model, native_name: str) -> np.ndarray:
        try:
            return _to_numpy(model.native.get_parameter(native_name))
        except AttributeError as error:
            raise KeyError(f"{native_name!r}: {error}") from None

    def stored_grad(self, model: Model, param: Any) -> Any:
        return param.grad

    # -- facts -----------------------------------------------------------------------------------
    def listing(self, model: Model) -> tuple[str, list[str]]:
        return "net.named_parameters()", [name for name, _ in model.native.named_parameters()]

    def layer_list(self, model: Model) -> tuple[str, list[Any]]:
        return "list(net)", list(model.native)

    def serializations(self, model: Model) -> dict[str, list[str]]:
        net = model.native
        return {
            "state_dict()": list(net.state_dict()),
            "named_parameters(remove_duplicate=False)": [
                name for name, _ in net.named_parameters(remove_duplicate=False)
            ],
        }

    # -- gradients and training ------------------------------------------------------------------
    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

    def _native_input(self, model: Model, x: np.ndarray) -> torch.Tensor:
        """The model's input on its device: ids as int64 (nn.Embedding's index type), else float32."""
        if model.spec.input_kind == "ids":
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(self.device)
        return self._tensor(x)

    def _loss(self, model: Model, x: torch.Tensor, loss: Loss) -> torch.Tensor:
        y = model.native(x)
        if loss.kind == "sum":
            return y.sum()
        return ((y - self._tensor(loss.target)) ** 2).mean()

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        model.native.zero_grad(set_to_none=True)  # .grad accumulates across backward calls
        model.native.train()
        self._loss(model, self._native_input(model, x), loss).backward()
        # A shared Parameter has one .grad, into which autograd already summed every use; a
        # frozen one (requires_grad False) has none.
        return {name: _to_numpy(p.grad) for name, p, _ in self.observed_params(model) if p.requires_grad}

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # net.parameters() yields a shared Parameter once, so SGD updates it once per step.
        optimizer = self.compiled(model, "sgd", lambda: torch.optim.SGD(model.native.parameters(), lr=lr))
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.native.train()
        unique = [(name, p) for name, p, _ in self.observed_params(model) if p.requires_grad]
        inputs = self._native_input(model, x)
        losses, grads = [], {name: [] for name, _ in unique}
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            value = self._loss(model, inputs, loss)
            value.backward()
            losses.append(value.detach())
            if watch:
                for name, p in unique:
                    grads[name].append(p.grad.detach().clone())
            optimizer.step()
        stacked = {name: _to_numpy(torch.stack(g)) for name, g in grads.items()} if watch else {}
        return torch.stack(losses).cpu().numpy().astype(np.float64), stacked

    # -- files -----------------------------------------------------------------------------------
    def write_native_file(self, model: Model, file: str) -> str:
        self.materialize(model)
        torch.save(model.native.state_dict(), file)
        return "torch.save(net.state_dict())"

    def native_file_keys(self, model: Model) -> dict[str, str]:
        # state_dict keys follow nn.Sequential's child names: position (0, 1) -> "0.1.weight".
        return {
            position.removeprefix("layers."): name
            for name, _, positions in self.observed_params(model)
            for position in positions
        }

    def read_native_file_entries(self, model: Model, file: str) -> list[tuple[str, np.ndarray]]:
        # weights_only=True: torch's restricted unpickler, which runs no code from the file.
        state = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ParamFileError(f"holds a {type(state).__name__}, not a state_dict")
        return [(key, _to_numpy(_checked_tensor(key, tensor))) for key, tensor in state.items()]


def _checked_tensor(key: object, tensor: object) -> torch.Tensor:
    """A stored parameter as the adapter writes one: a dense float32 tensor that owns exactly its
    elements. Anything else is refused before it is copied out: complex, integer or float64
    values would be cast silently, and a stride-0 (expanded) tensor would blow up on copy."""
    name = printable(str(key))
    if not isinstance(tensor, torch.Tensor):
        raise ParamFileError(f"entry {name} is a {type(tensor).__name__}, not a tensor")
    if tensor.dtype != torch.float32:
        raise ParamFileError(f"entry {name}: dtype={tensor.dtype}, but should be torch.float32")
    if tensor.layout != torch.strided or not tensor.is_contiguous():
        raise ParamFileError(f"entry {name}: not a dense contiguous tensor (strides {tensor.stride()})")
    needed = tensor.numel() * tensor.element_size()
    held = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
    if held != needed:
        raise ParamFileError(f"entry {name}: its storage holds {held} bytes for {needed} bytes of values")
    return tensor
