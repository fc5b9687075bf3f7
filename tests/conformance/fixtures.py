"""Model factories shared by the conformance tests: fresh models, loaded with the seeded weights."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np

from common.core.interface import Backend, Model
from common.core.models import BOOK_SPECS
from common.core.oracle import initial_weights, sample_input
from common.core.spec import ModelSpec
from common.declarations import declaration

BOOK_MODEL_NAMES = tuple(BOOK_SPECS)


def loaded_model(backend: Backend, spec: ModelSpec, seed: int = 0) -> tuple[Model, dict[str, np.ndarray]]:
    model = backend.build_mlp(spec)
    weights = initial_weights(spec, seed)
    backend.load_params(model, weights)
    return model, weights


def book_input(spec: ModelSpec) -> np.ndarray:
    return sample_input(spec, batch=2)


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
