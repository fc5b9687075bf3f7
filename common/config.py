"""Backend names, their synonyms, and the one place PARITY_BACKEND is read."""

from __future__ import annotations

import os
from collections.abc import Mapping

from common.errors import UsageError

ENV_VAR = "PARITY_BACKEND"

# Canonical backend names, in report order. Each is also the name of its venv and pyproject extra.
BACKENDS: tuple[str, ...] = ("torch", "mxnet", "jax", "tensorflow")

SYNONYMS: Mapping[str, str] = {
    "pytorch": "torch",
    "gluon": "mxnet",
    "flax": "jax",
    "tf": "tensorflow",
    "keras": "tensorflow",
}

# The framework each backend drives, as it names itself in a report.
FRAMEWORKS: Mapping[str, str] = {
    "torch": "PyTorch",
    "mxnet": "MXNet Gluon",
    "jax": "JAX/Flax linen",
    "tensorflow": "TensorFlow/Keras",
}


def valid_names() -> str:
    synonyms = ", ".join(f"{alias}={name}" for alias, name in SYNONYMS.items())
    return f"{', '.join(BACKENDS)} (synonyms: {synonyms})"


def canonical_backend(name: str) -> str:
    """Map a backend name or synonym to its canonical name; raise UsageError listing valid ones."""
    key = name.strip().lower()
    key = SYNONYMS.get(key, key)
    if key not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; valid names: {valid_names()}")
    return key


def parse_backend_list(text: str) -> tuple[str, ...]:
    """Parse 'torch,tf' or 'all' into canonical names, in report order, without duplicates."""
    if text.strip().lower() == "all":
        return BACKENDS
    names = {canonical_backend(part) for part in text.split(",") if part.strip()}
    if not names:
        raise UsageError(f"no backend named in {text!r}; valid names: {valid_names()}")
    return tuple(name for name in BACKENDS if name in names)


def add_backends_option(parser) -> None:
    """The ``--backends`` option every multi-backend command takes."""
    parser.add_argument(
        "--backends", default="all", help=f"comma-separated subset (default all); {valid_names()}"
    )


def selected_backend(environ: Mapping[str, str] | None = None) -> str:
    """The backend named by PARITY_BACKEND. This is the only function that reads it."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR, "").strip()
    if not value:
        raise UsageError(f"{ENV_VAR} is not set; set it to one of: {valid_names()}")
    return canonical_backend(value)
