"""Model factories shared by the conformance tests: fresh models, loaded with the seeded weights."""

from __future__ import annotations

import numpy as np

from common.core.interface import Backend, Model
from common.core.models import BOOK_SPECS
from common.core.oracle import initial_weights, sample_input
from common.core.spec import ModelSpec

BOOK_MODEL_NAMES = tuple(BOOK_SPECS)


def loaded_model(backend: Backend, spec: ModelSpec, seed: int = 0) -> tuple[Model, dict[str, np.ndarray]]:
    model = backend.build_mlp(spec)
    weights = initial_weights(spec, seed)
    backend.load_params(model, weights)
    return model, weights


def book_input(spec: ModelSpec) -> np.ndarray:
    return sample_input(spec, batch=2)
