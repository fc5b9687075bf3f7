"""Model factories shared by the conformance tests: fresh models, loaded with the seeded weights."""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np
import pytest

from common.core.expectations import conventions_of
from common.core.interface import Backend, Model
from common.core.models import BOOK_SPECS
from common.core.oracle import Conventions, initial_weights, sample_input
from common.core.spec import ModelSpec
from common.core.untrusted import printable
from common.declarations import declaration
from common.errors import MAX_MESSAGE, ParamFileError

BOOK_MODEL_NAMES = tuple(BOOK_SPECS)


def loaded_model(backend: Backend, spec: ModelSpec, seed: int = 0) -> tuple[Model, dict[str, np.ndarray]]:
    model = backend.build_mlp(spec)
    weights = initial_weights(spec, seed)
    backend.load_params(model, weights)
    return model, weights


def book_input(spec: ModelSpec) -> np.ndarray:
    return sample_input(spec, batch=2)


def declared_conventions(backend: Backend) -> Conventions:
    """The oracle's Conventions from the backend's declared BatchNorm facts; the oracle's defaults
    where it builds no BatchNorm (no spec it builds holds one)."""
    entry = declaration(backend.name)
    return conventions_of(entry.facts) if entry.capability("batchnorm").value else Conventions()


# The declared capabilities a generated spec may use (generate.cases() takes them by name).
SPEC_CAPABILITIES = ("batchnorm", "freezing", "embedding")


def spec_capabilities(backend: Backend) -> dict[str, bool]:
    entry = declaration(backend.name)
    return {name: entry.capability(name).value for name in SPEC_CAPABILITIES}


# Every adapter primitive and hook: none may run for an invalid spec or input. build_mlp itself is
# not among them: it is the entry under test, which must refuse before calling any of these.
ADAPTER_CALLS = sorted(
    Backend.__abstractmethods__
    | {
        "new_sequential",
        "children_scope",
        "share_dense",
        "construct",
        "finish_model",
        "seed",
        "native_file_budget",
    }
)


@contextlib.contextmanager
def recording(backend: Backend, names=ADAPTER_CALLS) -> Iterator[list[str]]:
    """Replace the adapter's methods ``names`` by stubs that only record that they were called."""
    calls: list[str] = []
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(
                mock.patch.object(type(backend), name, lambda self, *a, _name=name, **k: calls.append(_name))
            )
        yield calls


def declared(backend_name: str, key: str) -> Any:
    """What the backend's declaration names under ``key`` ("module:name", e.g. its hostile files
    or its native writer), imported; None where it declares none."""
    reference = getattr(declaration(backend_name), key)
    if not reference:
        return None
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def assert_refused_and_unchanged(backend, model, path: str, match: str = "", within: float = 10.0):
    """import_native_file refuses ``path`` with one ParamFileError line of at most MAX_MESSAGE
    characters that names the file, within ``within`` seconds, and ``model`` keeps its values."""
    __tracebackhide__ = True
    before = backend.snapshot(model)
    started = time.monotonic()
    with pytest.raises(ParamFileError, match=match or None) as info:
        backend.import_native_file(model, path)
    elapsed, message = time.monotonic() - started, str(info.value)
    assert elapsed < within, f"refused after {elapsed:.1f} s, but should be under {within} s [{message}]"
    assert message.isprintable() and len(message) <= MAX_MESSAGE, f"message={message[:1000]!r}"
    assert message.startswith(printable(path)), f"message={message!r}, but should name {path!r} first"
    for name, value in backend.snapshot(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} changed by a refused file")
