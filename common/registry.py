"""Loading an adapter by backend name, as its declaration says. An adapter is checked when it is
loaded: the error names the adapter and what it lacks, or the make target that installs its
framework."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping

from common.config import canonical_backend, selected_backend, selected_device
from common.core.interface import Backend
from common.declarations import Declaration, declaration
from common.errors import BackendUnavailable, UsageError

REQUIRED_ATTRIBUTES = ("name", "lazy_mechanism", "tie_mechanism")


def apply_env_vars(entry: Declaration) -> None:
    """Set the variables the framework reads at import (KERAS_BACKEND...). Refused if the framework
    is already imported with other settings: it would silently keep the old ones."""
    for key, value in entry.env_vars.items():
        current = os.environ.get(key)
        if current not in (None, value) and any(root in sys.modules for root in entry.import_roots):
            raise UsageError(
                f"backend {entry.name!r} needs {key}={value}, but this process already imported "
                f"its framework with {key}={current}; run it in its own process"
            )
        os.environ[key] = value


def apply_defaults(settings: Mapping[str, str]) -> None:
    """paramparity's own settings (a compilation cache, XLA_FLAGS...), where the user has set none."""
    for key, value in settings.items():
        os.environ.setdefault(key, value)


def adapter_class(entry: Declaration) -> type[Backend]:
    apply_env_vars(entry)
    try:
        module = importlib.import_module(entry.adapter_module)
    except ImportError as error:
        missing = [root for root in entry.import_roots if importlib.util.find_spec(root) is None]
        if missing or (error.name or "").split(".")[0] in entry.import_roots:
            raise BackendUnavailable(
                f"backend {entry.name!r}: cannot import {error.name!r} in {sys.prefix} ({error}); "
                f"create its environment with `make venv-{entry.env}` and run it there, "
                f"e.g. `PARITY_BACKEND={entry.name} make test`"
            ) from None
        raise
    where = f"adapter {entry.adapter} ({entry.path})"
    adapter = getattr(module, entry.adapter_class, None)
    if not (isinstance(adapter, type) and issubclass(adapter, Backend)):
        raise TypeError(f"{where} is not a common.core.interface.Backend subclass")
    missing = sorted(getattr(adapter, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"{where} does not implement: {', '.join(missing)}")
    for attribute in REQUIRED_ATTRIBUTES:
        if not hasattr(adapter, attribute):
            raise TypeError(f"{where} lacks the class attribute {attribute!r}")
    if adapter.name != entry.name:
        raise TypeError(f"{where} says name={adapter.name!r}, but its declaration says {entry.name!r}")
    return adapter


def load_backend(name: str | None = None, *, suite: bool = False) -> Backend:
    """The adapter for ``name`` (any synonym), or for PARITY_BACKEND when name is None, with the
    declaration's run_env_vars; ``suite`` for the conformance suite and the diff's probe, which
    run one-off programs and add suite_env_vars."""
    name = canonical_backend(name) if name else selected_backend()
    entry = declaration(name)
    if suite:
        apply_defaults(entry.suite_env_vars)
    apply_defaults(entry.run_env_vars)
    backend = adapter_class(entry)()
    backend.use_device(selected_device())
    return backend
