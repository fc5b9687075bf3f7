"""Backend names and the one place the settings are read: PARITY_BACKEND, PARITY_DEVICE,
PARITY_EXAMPLES and PARITY_SEED (PARITY_PYTHON is the environments', ``common.envs``). Names come
from the declarations (``backends/<name>/backend.toml``); nothing here lists a backend.
``check_settings`` checks every one before a command starts anything."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from common.declarations import declarations
from common.envs import check_python
from common.errors import UsageError

ENV_VAR = "PARITY_BACKEND"
DEVICE_VAR = "PARITY_DEVICE"
DEVICES = ("cpu", "cuda")
EXAMPLES_ENV = "PARITY_EXAMPLES"
SEED_ENV = "PARITY_SEED"
DEFAULT_EXAMPLES = 10  # per property in make test-all: JAX compiles each new architecture (~2 s)


def backend_names() -> tuple[str, ...]:
    """Canonical backend names, in report order."""
    return tuple(d.name for d in declarations())


def synonyms() -> dict[str, str]:
    """Every accepted alias (lower case) -> its canonical name."""
    return {alias.lower(): d.name for d in declarations() for alias in d.synonyms}


def valid_names() -> str:
    aliases = ", ".join(f"{alias}={name}" for alias, name in synonyms().items())
    return f"{', '.join(backend_names())} (synonyms: {aliases})"


def canonical_backend(name: str) -> str:
    """Map a backend name or synonym to its canonical name; raise UsageError listing valid ones."""
    key = name.strip().lower()
    key = synonyms().get(key, key)
    if key not in backend_names():
        raise UsageError(f"unknown backend {name!r}{did_you_mean(key)}; valid names: {valid_names()}")
    return key


def did_you_mean(key: str) -> str:
    """``; did you mean 'torch'?`` for the closest name or synonym, or nothing when none is close."""
    close = difflib.get_close_matches(key, [*backend_names(), *synonyms()], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_backend_list(text: str) -> tuple[str, ...]:
    """Parse 'torch,tf' or 'all' into canonical names, in report order, without duplicates."""
    if text.strip().lower() == "all":
        return backend_names()
    names = {canonical_backend(part) for part in text.split(",") if part.strip()}
    if not names:
        raise UsageError(f"no backend named in {text!r}; valid names: {valid_names()}")
    return tuple(name for name in backend_names() if name in names)


def add_backends_option(parser) -> None:
    """The ``--backends`` option every multi-backend command takes."""
    parser.add_argument(
        "--backends", default="all", help=f"comma-separated subset (default all); {valid_names()}"
    )


DEFAULT_TIMEOUT = 1800.0


def seconds_option(flag: str):
    """An argparse type for ``flag``: a positive finite number of seconds, else one line, exit 2
    (a UsageError passes through argparse to the command line's handler)."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag}={text}, but should be a positive, finite number of seconds")
        return value

    return seconds


def add_timeout_option(parser, default: float = DEFAULT_TIMEOUT) -> None:
    """The ``--timeout`` every per-backend command takes: a hung backend is reported, not waited on."""
    parser.add_argument(
        "--timeout",
        type=seconds_option("--timeout"),
        default=default,
        metavar="SECONDS",
        help=f"give up on one backend after this many seconds (default {default:.0f})",
    )


def selected_backend(environ: Mapping[str, str] | None = None) -> str:
    """The backend named by PARITY_BACKEND. This is the only function that reads it."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR, "").strip()
    if not value:
        raise UsageError(f"{ENV_VAR} is not set; set it to one of: {valid_names()}")
    return canonical_backend(value)


def selected_device(environ: Mapping[str, str] | None = None) -> str:
    """The device named by PARITY_DEVICE (default cpu). This is the only function that reads it."""
    environ = os.environ if environ is None else environ
    value = environ.get(DEVICE_VAR, "").strip().lower() or "cpu"
    if value not in DEVICES:
        raise UsageError(f"{DEVICE_VAR}={value!r} is not a device; valid: {', '.join(DEVICES)}")
    return value


@dataclass(frozen=True)
class Budget:
    examples: int
    seed: int | None  # None: derandomized


def budget(environ: Mapping[str, str] | None = None) -> Budget:
    """Examples per property and the seed, from PARITY_EXAMPLES and PARITY_SEED (read only here)."""
    environ = os.environ if environ is None else environ
    return Budget(
        _env_int(environ, EXAMPLES_ENV, DEFAULT_EXAMPLES, minimum=1),
        _env_int(environ, SEED_ENV, None, minimum=0),
    )


def _env_int(environ: Mapping[str, str], name: str, default: int | None, minimum: int) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise UsageError(f"{name}={text!r}, but should be an int >= {minimum}")
    return value


def check_settings(backends: Iterable[str]) -> None:
    """Every setting, before a command starts anything: a bad one is one line and exit 2 here,
    not a traceback in every suite. ``backends``: those the command runs, whose frameworks
    PARITY_PYTHON must have."""
    selected_device()
    budget()
    check_python(backends)
