"""Loading an adapter by backend name. An adapter is checked when it is loaded: the error names
the adapter and what it lacks, or the make target that installs its framework."""

from __future__ import annotations

import importlib
import importlib.util
import sys

from common.config import canonical_backend, selected_backend
from common.errors import BackendUnavailable
from common.interface import Backend

# backend -> (adapter module, class, the top-level module its framework installs)
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "torch": ("backends.torch_backend", "TorchBackend", "torch"),
    "mxnet": ("backends.mxnet_backend", "MXNetBackend", "mxnet"),
    "jax": ("backends.jax_backend", "FlaxBackend", "flax"),
    "tensorflow": ("backends.tensorflow_backend", "KerasBackend", "tensorflow"),
}


def load_backend(name: str | None = None) -> Backend:
    """The adapter for ``name`` (any synonym), or for PARITY_BACKEND when name is None."""
    name = canonical_backend(name) if name else selected_backend()
    module_name, class_name, framework = ADAPTERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if importlib.util.find_spec(framework) is None:
            raise BackendUnavailable(
                f"backend {name!r}: cannot import {error.name!r} in {sys.prefix} ({error}); "
                f"create its environment with `make venv-{name}` and run it there, "
                f"e.g. `PARITY_BACKEND={name} make test`"
            ) from None
        raise
    adapter = getattr(module, class_name, None)
    if not (isinstance(adapter, type) and issubclass(adapter, Backend)):
        raise TypeError(f"{module_name}.{class_name} is not a common.interface.Backend subclass")
    missing = sorted(getattr(adapter, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"adapter {module_name}.{class_name} does not implement: {', '.join(missing)}")
    for attribute in ("name", "weight_layout", "lazy_mechanism", "tie_mechanism"):
        if not hasattr(adapter, attribute):
            raise TypeError(f"adapter {module_name}.{class_name} lacks the class attribute {attribute!r}")
    return adapter()
