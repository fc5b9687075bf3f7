"""What every adapter on JAX shares, whatever its library (Flax linen and NNX, Equinox, Keras on
JAX): arrays to numpy, the loss, checked writes, compiled builds per architecture, and device
placement of jax arrays. Library code lives with its library: Flax's in backends/_flax_common.py.
Nothing here imports a library above JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from common.core.interface import Model
from common.core.oracle import Loss
from common.core.spec import ModelSpec

__all__ = [
    "CompiledPerSpec",
    "JaxPlacement",
    "Step",
    "Tree",
    "checked_value",
    "compiles_build",
    "device_array",
    "fresh_copies",
    "model_input",
    "objective",
    "stacked",
    "target_array",
    "to_numpy",
]

Tree = dict[Any, Any]


# Up to this many Dense layers a build or init is compiled as one program; beyond, XLA's compile
# time outgrows the model (width-4 layers: 64 take 6.8 s compiled against 0.4 s op by op, 256
# take 38 s against 1.2 s), and op by op reuses its per-shape cache across repeated layers.
COMPILED_BUILD_MAX_DENSE = 16


def compiles_build(spec: ModelSpec) -> bool:
    return len(spec.dense_slots) <= COMPILED_BUILD_MAX_DENSE


class CompiledPerSpec:
    """Compiled functions, one per architecture, the least recently used dropped first. A build
    or an init depends on the spec alone, so a suite that rebuilds one spec compiles it once."""

    def __init__(self, size: int = 32) -> None:
        self.size, self._items = size, {}

    def get(self, key: Any, make: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        function = self._items.pop(key, None) or make()
        self._items[key] = function  # most recent last
        while len(self._items) > self.size:
            del self._items[next(iter(self._items))]
        return function


# (carry, lr, x, target) -> (carry, loss, gradients as a nested dict keyed like the native names);
# the carry is a tuple of what the step threads, the rate is not threaded (it never changes)
Step = Callable[[tuple[Any, ...], jax.Array, jax.Array, Any], tuple[tuple[Any, ...], jax.Array, Tree]]


def to_numpy(value: Any) -> np.ndarray:
    return np.array(value, dtype=np.float32)  # a copy: later updates never leak out


def stacked(arrays: list[jax.Array]) -> np.ndarray:
    # Each array is already computed by the time the last step is; numpy stacks them in well under
    # a millisecond, where jnp.stack's dtype promotion over hundreds of arguments takes several.
    return np.stack([np.asarray(a) for a in arrays])


class _DeviceCopies:
    """The device copy of the last host array sent for each use (input, target, rate), reused
    while a new one has the very same bits, dtype and shape and the default device is unchanged.
    Training calls ``train`` again and again on one dataset, and each copy took 30-180 us a call
    (measured here), next to a 200-step run of 10-15 ms; a hand-written loop copies its data once.
    Bits, not values: -0.0 is not 0.0, and a NaN's payload is kept."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[Any, np.ndarray, jax.Array]] = {}

    def get(self, use: str, value: np.ndarray) -> jax.Array:
        device = jax.config.jax_default_device
        held = self._held.get(use)  # one tuple, replaced whole: a racing thread reads a whole one
        if held is not None and held[0] is device and _same_bits(held[1], value):
            return held[2]
        host = value.copy()  # ours: jax may alias a host buffer, and the caller's may change
        copy = jnp.asarray(host)
        self._held[use] = (device, host, copy)
        return copy


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


_DEVICE_COPIES = _DeviceCopies()


def device_array(use: str, value: Any, dtype: Any) -> jax.Array:
    """``value`` as a jax array of ``dtype`` on the default device: the one made for ``use`` last
    time when the bits are the same (_DeviceCopies)."""
    return _DEVICE_COPIES.get(use, np.asarray(value, dtype))


# Fresh buffers for a whole tree in one call (jnp.copy per array is a dispatch each): what a
# training loop gives a step that donates its arguments, so the model keeps its own arrays until
# the last step and an interrupted call leaves it as it was.
fresh_copies = jax.jit(lambda tree: jax.tree_util.tree_map(jnp.copy, tree))


def model_input(spec: ModelSpec, x: Any) -> jax.Array:
    """``x`` (already checked) as the jax array the net takes: float32 features, or int32 ids for
    a model that starts with an Embedding (jax is 32-bit by default, and a lookup refuses floats)."""
    return device_array("input", x, np.int32 if spec.input_kind == "ids" else np.float32)


def objective(y: jax.Array, kind: str, target: jax.Array | None) -> jax.Array:
    return jnp.sum(y) if kind == "sum" else jnp.mean((y - target) ** 2)


def target_array(loss: Loss) -> jax.Array | None:
    return None if loss.target is None else device_array("target", loss.target, np.float32)


def checked_value(position: str, value: np.ndarray, shape: tuple[int, ...]) -> jax.Array:
    """``value`` as a float32 jax array, refused unless it has ``shape`` (a jax write broadcasts)."""
    value = np.asarray(value, dtype=np.float32)
    if value.shape != tuple(shape):
        raise ValueError(f"{position}: shape={value.shape}, but should be {tuple(shape)}")
    return jnp.asarray(value)


class JaxPlacement:
    """Device placement for an adapter whose parameters are jax arrays (or wrap one): jax places
    arrays on its default device, which use_device sets; a tie is one array, one buffer."""

    def available_devices(self) -> dict[str, str]:
        gpus = [d for d in jax.devices() if d.platform == "gpu"] if jax.default_backend() == "gpu" else []
        cuda = "" if gpus else f"no CUDA device (jax {jax.__version__} runs on {jax.default_backend()})"
        return {"cpu": "", "cuda": cuda}

    def use_device(self, device: str) -> None:
        super().use_device(device)  # type: ignore[misc]
        platform = "gpu" if device == "cuda" else "cpu"
        jax.config.update("jax_default_device", jax.devices(platform)[0])

    def param_location(self, model: Model, position: str) -> tuple[str, int]:
        param = self.param_object(model, position)  # type: ignore[attr-defined]
        # An nnx.Param wraps its array; a linen leaf is one.
        array = param.get_value() if hasattr(param, "get_value") else param
        platform = next(iter(array.devices())).platform
        return ("cuda" if platform == "gpu" else platform), array.unsafe_buffer_pointer()
