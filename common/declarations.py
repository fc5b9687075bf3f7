"""The one declaration per backend: ``backends/<name>/backend.toml``.

Every list of backends (config, registry, make targets, test-all, diff columns, claims, the
framework-free test, xfails) derives from these files. Adding a backend is adding a folder; no
other file names it. A declaration is plain data, read with ``tomllib``, so the Makefile and the
framework-free base environment can read it without importing any framework.

Required keys (a missing or mistyped one is an error naming the file and the key):

    name            canonical name; also what PARITY_BACKEND and make test-<name> accept
    order           report order (columns of the diff, rows of test-all)
    framework       how the report names the framework, e.g. "Keras 3 on JAX"
    book_tab        the D2L tab whose claims apply ("PyTorch", "MXNet", "JAX", "TensorFlow")
    adapter         "module:Class" of the adapter, a common.core.interface.Backend subclass
    env             the environment it runs in: .venvs/<env>, built from pyproject's [env] extra
    import_roots    top-level modules of its framework (the adapter may import only these)

Optional: ``synonyms``, ``env_vars`` (set before the framework is imported), ``run_env_vars``
(set before the import where the user has not set them, in every process that loads the backend
through paramparity: e.g. JAX's on-disk compilation cache; ``{root}`` in a value is the project
folder), ``suite_env_vars`` (the same, only in the conformance suite and the diff's probe: e.g.
XLA_FLAGS, since both compile many one-off programs), ``env_check``
(Python run in the new environment, e.g. to insist on a CPU build), ``[capabilities]`` (each a
table with ``value`` and ``reason``), ``[facts]`` (expected values the suite checks) and
``[xfails]`` (test id = reason; strict xfails for this backend only), and ``bench``
("module:function", ``make_handwritten(spec, weights, x, y, lr) -> run(steps) -> losses``: the
hand-written training loop on the framework's fast path that ``make bench`` holds the adapter
against, set up once like the adapter's model), and ``hostile`` ("module:NAME", a dict of name ->
``writer(backend, model, path)`` making hostile native files the suite must refuse).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from common.errors import UsageError


def _is_project(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    return (
        (folder / "backends").is_dir()
        and pyproject.is_file()
        and 'name = "paramparity"' in pyproject.read_text(errors="replace")
    )


def find_root() -> Path:
    """The checkout, found from the project files: this package's parent when it lives in one (a
    checkout or an editable install), else the working directory or one above it (an installed
    copy run from a checkout), else PARITY_ROOT. The environments and reports live there."""
    override = os.environ.get("PARITY_ROOT")
    if override:
        return Path(override).resolve()
    here = Path(__file__).resolve().parent.parent
    for folder in (here, Path.cwd(), *Path.cwd().parents):
        if _is_project(folder):
            return folder
    return here


ROOT = find_root()
BACKENDS_DIR = ROOT / "backends"
DECLARATION_FILE = "backend.toml"

_REQUIRED: dict[str, type] = {
    "name": str,
    "order": int,
    "framework": str,
    "book_tab": str,
    "adapter": str,
    "env": str,
    "import_roots": list,
}
_OPTIONAL: dict[str, type] = {
    "synonyms": list,
    "env_vars": dict,
    "run_env_vars": dict,
    "suite_env_vars": dict,
    "env_check": str,
    "capabilities": dict,
    "facts": dict,
    "xfails": dict,
    "bench": str,
    "hostile": str,
}


class DeclarationError(UsageError):
    """A backends/<name>/backend.toml that cannot be used; names the file and what is wrong."""


@dataclass(frozen=True)
class Capability:
    value: bool
    reason: str


@dataclass(frozen=True)
class Declaration:
    name: str
    order: int
    framework: str
    book_tab: str
    adapter: str
    env: str
    import_roots: tuple[str, ...]
    synonyms: tuple[str, ...] = ()
    env_vars: Mapping[str, str] = field(default_factory=dict)
    run_env_vars: Mapping[str, str] = field(default_factory=dict)
    suite_env_vars: Mapping[str, str] = field(default_factory=dict)
    env_check: str = ""
    capabilities: Mapping[str, Capability] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    xfails: Mapping[str, str] = field(default_factory=dict)
    bench: str = ""
    hostile: str = ""
    path: str = ""

    @property
    def adapter_module(self) -> str:
        return self.adapter.partition(":")[0]

    @property
    def adapter_class(self) -> str:
        return self.adapter.partition(":")[2]

    def capability(self, key: str) -> Capability:
        if key not in self.capabilities:
            raise DeclarationError(f"{self.path}: [capabilities] has no {key!r}; declare it with its reason")
        return self.capabilities[key]

    def fact(self, key: str) -> Any:
        if key not in self.facts:
            raise DeclarationError(f"{self.path}: [facts] has no {key!r}")
        return self.facts[key]


def _strings(data: dict[str, Any], key: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in data.get(key, {}).items()}


def parse_declaration(path: Path) -> Declaration:
    where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise DeclarationError(f"{where}: cannot read it: {error}") from None
    for key in _REQUIRED:
        if key not in data:
            raise DeclarationError(f"{where}: missing required key {key!r}")
    for key, value in data.items():
        kind = _REQUIRED.get(key) or _OPTIONAL.get(key)
        if kind is None:
            valid = ", ".join([*_REQUIRED, *_OPTIONAL])
            raise DeclarationError(f"{where}: unknown key {key!r}; valid keys: {valid}")
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise DeclarationError(f"{where}: {key}={value!r}, but should be a {kind.__name__}")
    if ":" not in data["adapter"]:
        raise DeclarationError(f"{where}: adapter={data['adapter']!r}, but should be 'module:Class'")
    capabilities = {}
    for key, entry in data.get("capabilities", {}).items():
        if not (isinstance(entry, dict) and isinstance(entry.get("value"), bool) and entry.get("reason")):
            raise DeclarationError(f"{where}: capabilities.{key} needs a boolean 'value' and a 'reason'")
        capabilities[key] = Capability(entry["value"], str(entry["reason"]))
    return Declaration(
        name=data["name"],
        order=data["order"],
        framework=data["framework"],
        book_tab=data["book_tab"],
        adapter=data["adapter"],
        env=data["env"],
        import_roots=tuple(data["import_roots"]),
        synonyms=tuple(data.get("synonyms", ())),
        env_vars=_strings(data, "env_vars"),
        run_env_vars={k: v.replace("{root}", str(ROOT)) for k, v in _strings(data, "run_env_vars").items()},
        suite_env_vars=_strings(data, "suite_env_vars"),
        env_check=data.get("env_check", ""),
        capabilities=capabilities,
        facts=dict(data.get("facts", {})),
        xfails=_strings(data, "xfails"),
        bench=data.get("bench", ""),
        hostile=data.get("hostile", ""),
        path=where,
    )


@cache
def declarations(folder: Path = BACKENDS_DIR) -> tuple[Declaration, ...]:
    """Every backend declared under ``folder``, in report order. Names and synonyms must be unique."""
    found = sorted(
        (parse_declaration(path) for path in sorted(folder.glob(f"*/{DECLARATION_FILE}"))),
        key=lambda d: (d.order, d.name),
    )
    if not found:
        raise DeclarationError(f"no backend is declared: no {folder.name}/*/{DECLARATION_FILE}")
    claimed: dict[str, str] = {}
    for declaration in found:
        for alias in (declaration.name, *declaration.synonyms):
            key = alias.lower()
            if key in claimed:
                raise DeclarationError(
                    f"{declaration.path}: the name {alias!r} is already taken by {claimed[key]}"
                )
            claimed[key] = declaration.path
    return tuple(found)


def declaration(name: str) -> Declaration:
    """The declaration of a canonical backend name."""
    for entry in declarations():
        if entry.name == name:
            return entry
    raise DeclarationError(f"no backend named {name!r} is declared")


def envs() -> tuple[str, ...]:
    """Every environment: base first, then each backend's, in report order, once each."""
    return tuple(dict.fromkeys(["base", *(d.env for d in declarations())]))


__all__ = ["Capability", "Declaration", "DeclarationError", "declaration", "declarations", "envs"]
