"""The one declaration per backend: ``backends/<name>/backend.toml``.

Every list of backends (config, registry, make targets, test-all, diff columns, claims, the
framework-free test, xfails) derives from these files. Adding a backend is adding a folder; no
other file names it. A declaration is plain data, read with ``tomllib``, so the Makefile and the
framework-free base environment can read it without importing any framework.

The schema is ``SCHEMA`` below, with the required ``[capabilities]`` and ``[facts]`` keys and the
values a fact may take: exactly what the suite and the commands rely on. A declaration that lacks
or mistypes any of it is refused when it is loaded, with one error naming the file and the key.
A family of backends shares settings through ``family = ["<name>", ...]``: ``backends/_<name>.toml``
holds keys and tables (env vars, the book tab, known divergences...) that each member extends with
its own, so nothing is copied between members.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from common.core.initializers import Law, law_from_table
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
    copy run from a checkout), else PARITY_ROOT. The environments and reports live there. An
    installed copy run outside any checkout gets the working directory: its reports go there,
    never into site-packages, and commands that need environments refuse (``in_checkout``)."""
    override = os.environ.get("PARITY_ROOT")
    if override:
        return Path(override).resolve()
    for folder in (PACKAGE_ROOT, Path.cwd(), *Path.cwd().parents):
        if _is_project(folder):
            return folder
    return Path.cwd()


def in_checkout() -> bool:
    return _is_project(ROOT)


PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds common/ and backends/, wherever installed
ROOT = find_root()
BACKENDS_DIR = PACKAGE_ROOT / "backends"  # the declarations travel with the code that reads them
DECLARATION_FILE = "backend.toml"

BOOK_TABS = ("PyTorch", "MXNet", "JAX", "TensorFlow")  # the D2L tabs that claims name
NO_BOOK_TAB = "none"  # a framework the book does not cover: only the claims about every backend apply
FAMILY_FILE = "_{family}.toml"  # under backends/: settings shared by a family's members


@dataclass(frozen=True)
class Key:
    kind: type | tuple[type, ...]
    required: bool
    doc: str


SCHEMA: dict[str, Key] = {
    "name": Key(str, True, "canonical name; also what PARITY_BACKEND and make test-<name> accept"),
    "order": Key(int, True, "report order (columns of the diff, rows of test-all)"),
    "framework": Key(str, True, 'how the report names the framework, e.g. "Keras 3 on JAX"'),
    "book_tab": Key(
        str,
        True,
        f"the D2L tab whose claims apply: one of {', '.join(BOOK_TABS)}, or "
        f"{NO_BOOK_TAB!r} for a framework the book does not cover",
    ),
    "adapter": Key(str, True, '"module:Class" of the adapter, a common.core.interface.Backend subclass'),
    "env": Key(str, True, "the environment it runs in: .venvs/<env>, built from pyproject's [env] extra"),
    "import_roots": Key(list, True, "top-level modules of its framework (the adapter may import only these)"),
    "bench": Key(
        str,
        True,
        '"module:function": make_handwritten(spec, weights, x, y, lr) -> HandwrittenLoop (run(steps) '
        "-> losses, running_stats()), the hand-written loop on the framework's fast path that make "
        "bench compares, for the tied MLP and the BatchNorm model",
    ),
    "capabilities": Key(dict, True, "each a table with a boolean value and a reason; see CAPABILITIES"),
    "facts": Key(dict, True, "expected values the suite checks against the behaviour; see FACTS"),
    "family": Key(
        (str, list),
        False,
        "families, in order: backends/_<family>.toml holds keys and tables this "
        'declaration extends (a single name may be written as a string: family = "jax")',
    ),
    "synonyms": Key(list, False, "other names PARITY_BACKEND accepts"),
    "env_vars": Key(dict, False, "set before the framework is imported (KERAS_BACKEND...)"),
    "run_env_vars": Key(dict, False, "defaults in every process paramparity runs ({root}: the project)"),
    "suite_env_vars": Key(dict, False, "defaults in its conformance suite and the diff's probe only"),
    "env_check": Key(str, False, "Python run in the new environment, e.g. to insist on a CPU build"),
    "xfails": Key(dict, False, "test id = reason: strict xfails for this backend's real divergences"),
    "hostile": Key(str, False, '"module:NAME": name -> writer(backend, model, path) of hostile native files'),
    "initializers": Key(
        str,
        False,
        '"module:Class": a common.core.initializers.Initializers subclass, a fresh Dense built with the '
        "framework's default and built-in initializers (D2L 6.3); with it, the facts in "
        "INITIALIZER_FACTS become required",
    ),
    "native_writer": Key(
        str,
        False,
        '"module:function": write(backend, model, path, entries), the framework\'s own file at '
        "path + native_file_suffix holding exactly entries (native key -> numpy array, any dtype; "
        "common.core.hostile_native.FormatCannotHold for one the format lacks): hostile native "
        "files and make fuzz are made with it",
    ),
}
CAPABILITIES: dict[str, str] = {
    "lazy_input_size": "whether a Dense infers its input width at the first forward",
    "device_placement": "whether parameter buffers can be located (device, address) to prove a tie",
    "batchnorm": "whether the adapter builds BatchNorm layers, with their running statistics",
    "freezing": "whether the adapter freezes a layer (trainable = false) with the framework's idiom",
    "embedding": "whether the adapter builds an Embedding and an output Dense tied to its table",
    "custom_layer": "whether the adapter builds a Dense from its own layer class through the "
    "framework's custom-layer API (D2L 6.5's MyLinear: weight and bias created by the user's class)",
}
# A fact's allowed values: a tuple of words, or a type (numbers).
FACTS: dict[str, tuple[str, ...] | type] = {
    "weight_layout": ("(out, in)", "(in, out)"),  # the native layout of a Dense weight
    "grad_state_before_backward": ("none", "zeros", "not stored"),  # D2L 6.2.1.3
}
# Required where capabilities.batchnorm is true: the framework's BatchNorm conventions, in the
# oracle's terms (common.core.oracle.Conventions); the suite trains against them.
BATCHNORM_FACTS: dict[str, tuple[str, ...] | type] = {
    "batchnorm_momentum": float,  # the default momentum, canonical: the weight of the new batch
    "batchnorm_eps": float,  # the default epsilon
    "batchnorm_running_var": ("unbiased", "biased"),  # which batch variance the running one averages
    "frozen_batchnorm": ("training", "inference"),  # what a frozen BatchNorm does while training
    # when a training pass writes the running statistics: as each use runs ("forward"), or in the
    # backward pass ("backward"): last use first, and only at a use the backward reaches
    "batchnorm_statistics_update": ("forward", "backward"),
    # how inference reads the running statistics: as they are, or divided by
    # 1 - (1 - momentum) ** (training-mode uses since the layer was built)
    "batchnorm_inference_debias": ("none", "use_count"),
}
# Facts of a backend that declares the embedding capability, measured on the embed_tied model.
EMBEDDING_FACTS: dict[str, tuple[str, ...] | type] = {
    # "same_parameter": the output layer is the framework's own Dense, holding the embedding's
    # Parameter as its weight (torch, MXNet); "table_read": it reads the table through a call
    # (Embed.attend, ReversibleEmbedding, as_linear...), applied transposed where kernels are (in, out)
    "embedding_tie": ("same_parameter", "table_read"),
    "embedding_listing_entries": int,  # entries the framework's own parameter listing shows
    "embedding_saved_copies": int,  # entries of the framework's own file that hold the table
}
# Required where ``initializers`` is declared: the framework's default laws for a fresh Dense, as
# tables read by common.core.initializers.law_from_table, e.g. { kind = "uniform", bound =
# { numerator = 1.0, fan = "fan_in" } } for U(-a, a), a = sqrt(1 / fan_in), or
# { kind = "constant", value = 0.0 }. The suite tests samples against them (D2L 6.3).
INITIALIZER_FACTS: dict[str, tuple[str, ...] | type] = {
    "default_weight_init": dict,
    "default_bias_init": dict,
}
# Members of a family may set these in the family file; a member's own keys win, table by table.
FAMILY_KEYS = (
    "book_tab",
    "import_roots",
    "env",
    "env_vars",
    "run_env_vars",
    "suite_env_vars",
    "hostile",
    "native_writer",
    "initializers",
    "capabilities",
    "facts",
    "xfails",
)


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
    bench: str
    capabilities: Mapping[str, Capability]
    facts: Mapping[str, Any]
    families: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()
    env_vars: Mapping[str, str] = field(default_factory=dict)
    run_env_vars: Mapping[str, str] = field(default_factory=dict)
    suite_env_vars: Mapping[str, str] = field(default_factory=dict)
    env_check: str = ""
    xfails: Mapping[str, str] = field(default_factory=dict)
    hostile: str = ""
    native_writer: str = ""
    initializers: str = ""
    path: str = ""

    @property
    def adapter_module(self) -> str:
        return self.adapter.partition(":")[0]

    @property
    def adapter_class(self) -> str:
        return self.adapter.partition(":")[2]

    @property
    def weight_layout(self) -> str:
        return self.facts["weight_layout"]

    def capability(self, key: str) -> Capability:
        if key not in self.capabilities:
            raise DeclarationError(f"{self.path}: [capabilities] has no {key!r}; declare it with its reason")
        return self.capabilities[key]

    def fact(self, key: str) -> Any:
        if key not in self.facts:
            raise DeclarationError(f"{self.path}: [facts] has no {key!r}")
        return self.facts[key]

    def default_init(self, parameter: str) -> Law:
        """The declared law of a fresh Dense's default ``parameter`` ("weight" or "bias")."""
        return law_from_table(self.fact(f"default_{parameter}_init"))


def _strings(data: dict[str, Any], key: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in data.get(key, {}).items()}


def _read_toml(path: Path, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise DeclarationError(f"{where}: cannot read it: {error}") from None


def _with_families(data: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    """``data`` extending its families' files, in the order it names them: a later list or scalar
    replaces an earlier one, a later table is merged over an earlier one key by key, and the
    member's own keys come last."""
    families = data.get("family", [])
    families = [families] if isinstance(families, str) else families
    if not isinstance(families, list):
        raise DeclarationError(f"{where}: family={families!r}, but should be a name or a list of names")
    merged: dict[str, Any] = {}
    for family in [*families, None]:
        if family is None:
            shared, source = data, where
        else:
            if not isinstance(family, str) or not family.isidentifier():
                raise DeclarationError(f"{where}: family {family!r}, but should be a name like 'jax'")
            family_path = path.parent.parent / FAMILY_FILE.format(family=family)
            source = f"{Path(where).parent.parent / family_path.name}"
            if not family_path.is_file():
                raise DeclarationError(f"{where}: family {family!r} needs {source}, which does not exist")
            shared = _read_toml(family_path, source)
            for key in shared:
                if key not in FAMILY_KEYS:
                    raise DeclarationError(
                        f"{source}: key {key!r} cannot be shared by a family; "
                        f"shared keys: {', '.join(FAMILY_KEYS)}"
                    )
        for key, value in shared.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def _check_callable_ref(where: str, key: str, value: str) -> None:
    module, sep, attribute = value.partition(":")
    if not (sep and all(part.isidentifier() for part in module.split(".")) and attribute.isidentifier()):
        raise DeclarationError(f"{where}: {key}={value!r}, but should be 'module:name'")


def parse_declaration(path: Path) -> Declaration:
    """One declaration, checked against SCHEMA, CAPABILITIES and FACTS: the first problem found is
    one DeclarationError naming the file and the key."""
    where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    data = _with_families(_read_toml(path, where), path, where)
    for key, spec in SCHEMA.items():
        if spec.required and key not in data:
            raise DeclarationError(f"{where}: missing required key {key!r} ({spec.doc})")
    for key, value in data.items():
        spec = SCHEMA.get(key)
        if spec is None:
            raise DeclarationError(f"{where}: unknown key {key!r}; valid keys: {', '.join(SCHEMA)}")
        if not isinstance(value, spec.kind) or isinstance(value, bool) and spec.kind is int:
            kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
            names = " or ".join(kind.__name__ for kind in kinds)
            raise DeclarationError(f"{where}: {key}={value!r}, but should be a {names}")
    optional_refs = ("hostile", "native_writer", "initializers")
    for key in ("adapter", "bench", *(key for key in optional_refs if key in data)):
        _check_callable_ref(where, key, data[key])
    if data["book_tab"] not in (*BOOK_TABS, NO_BOOK_TAB):
        raise DeclarationError(
            f"{where}: book_tab={data['book_tab']!r}, "
            f"but should be one of {', '.join((*BOOK_TABS, NO_BOOK_TAB))}"
        )
    capabilities = {}
    for key in CAPABILITIES:
        if key not in data["capabilities"]:
            raise DeclarationError(f"{where}: [capabilities] lacks {key!r} ({CAPABILITIES[key]})")
    for key, entry in data["capabilities"].items():
        if key not in CAPABILITIES:
            raise DeclarationError(f"{where}: unknown capability {key!r}; valid: {', '.join(CAPABILITIES)}")
        if not (isinstance(entry, dict) and isinstance(entry.get("value"), bool) and entry.get("reason")):
            raise DeclarationError(f"{where}: capabilities.{key} needs a boolean 'value' and a 'reason'")
        capabilities[key] = Capability(entry["value"], str(entry["reason"]))
    required_facts = dict(FACTS)
    if capabilities["batchnorm"].value:
        required_facts.update(BATCHNORM_FACTS)
    if capabilities["embedding"].value:
        required_facts.update(EMBEDDING_FACTS)
    if "initializers" in data:
        required_facts.update(INITIALIZER_FACTS)
    for key, allowed in required_facts.items():
        value = data["facts"].get(key)
        wanted = f"a {allowed.__name__}" if isinstance(allowed, type) else f"one of: {', '.join(allowed)}"
        if value is None:
            raise DeclarationError(f"{where}: [facts] lacks {key!r}; {wanted}")
        valid = (
            isinstance(value, allowed) and not isinstance(value, bool)
            if isinstance(allowed, type)
            else value in allowed
        )
        if not valid:
            raise DeclarationError(f"{where}: facts.{key}={value!r}, but should be {wanted}")
        if key in INITIALIZER_FACTS:
            try:
                law_from_table(value)
            except ValueError as error:
                raise DeclarationError(f"{where}: facts.{key}: {error}") from None
    known_facts = {*FACTS, *BATCHNORM_FACTS, *EMBEDDING_FACTS, *INITIALIZER_FACTS}
    unknown_facts = sorted(set(data["facts"]) - known_facts)
    if unknown_facts:
        valid_facts = ", ".join([*FACTS, *BATCHNORM_FACTS, *EMBEDDING_FACTS, *INITIALIZER_FACTS])
        raise DeclarationError(f"{where}: unknown fact {unknown_facts[0]!r}; valid: {valid_facts}")
    return Declaration(
        name=data["name"],
        order=data["order"],
        framework=data["framework"],
        book_tab=data["book_tab"],
        adapter=data["adapter"],
        env=data["env"],
        import_roots=tuple(data["import_roots"]),
        bench=data["bench"],
        capabilities=capabilities,
        facts=dict(data["facts"]),
        families=tuple([data["family"]] if isinstance(data.get("family"), str) else data.get("family", [])),
        synonyms=tuple(data.get("synonyms", ())),
        env_vars=_strings(data, "env_vars"),
        run_env_vars={k: v.replace("{root}", str(ROOT)) for k, v in _strings(data, "run_env_vars").items()},
        suite_env_vars=_strings(data, "suite_env_vars"),
        env_check=data.get("env_check", ""),
        xfails=_strings(data, "xfails"),
        hostile=data.get("hostile", ""),
        native_writer=data.get("native_writer", ""),
        initializers=data.get("initializers", ""),
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


__all__ = [
    "BATCHNORM_FACTS",
    "BOOK_TABS",
    "CAPABILITIES",
    "FACTS",
    "INITIALIZER_FACTS",
    "NO_BOOK_TAB",
    "SCHEMA",
    "Capability",
    "Declaration",
    "DeclarationError",
    "declaration",
    "declarations",
    "envs",
]
