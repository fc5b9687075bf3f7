"""Portable parameters: export from one framework, import into any other, ties included.

A file holds each unique parameter once, under its canonical name and in canonical layout
(weights (out, in)); tied positions are recorded as aliases in the metadata, never as copies.
Non-trainable state (BatchNorm running statistics) is stored beside the parameters under its
canonical names (``layers.1.running_mean``), in the canonical convention (the running variance as
the framework keeps it), and listed in the metadata's "state".
Import validates everything (format, spec, ties, names, shapes, dtypes, finiteness) before the
model is touched, and the backend's load_params restores the old values if a write still fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.core import safetensors_io
from common.core.params import check_layout, check_state_layout, check_state_values, check_values
from common.core.spec import ModelSpec, spec_from_dict
from common.core.untrusted import load_json, printable, shown
from common.errors import ParamFileError, SpecError

if TYPE_CHECKING:  # the interface calls nothing here, so this is a one-way dependency
    from common.core.interface import Backend, Model

FORMAT = "paramparity/1"


def tie_groups(spec: ModelSpec) -> list[list[str]]:
    """Each shared parameter's positions, as layer names: [["layers.2", "layers.4"]]."""
    groups = [
        [name.rsplit(".", 1)[0] for name in p.positions]
        for p in spec.params
        if len(p.positions) > 1 and p.role == "weight"
    ]
    return groups


def aliases(spec: ModelSpec) -> dict[str, str]:
    return {position: p.name for p in spec.params for position in p.positions if position != p.name}


def metadata_for(spec: ModelSpec, framework: str, version: str) -> dict[str, str]:
    return {
        "format": FORMAT,
        "spec": json.dumps(spec.to_dict(), sort_keys=True),
        "framework": framework,
        "framework_version": version,
        "layout": "canonical: weight (out, in), bias (out,); an embedding table (vocab, dim)",
        "ties": json.dumps(tie_groups(spec)),
        "aliases": json.dumps(aliases(spec), sort_keys=True),
        "state": json.dumps(list(spec.state_shapes)),
    }


def write_portable(
    path: str | Path,
    spec: ModelSpec,
    values: dict[str, np.ndarray],
    framework: str = "numpy",
    version: str = np.__version__,
    state: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write unique parameters (canonical names and layout), and the spec's state where it has
    any (``state``, defaulting to every framework's start: mean 0, variance 1), with the
    metadata import checks."""
    path = Path(path)
    ordered = {p.name: np.asarray(values[p.name], dtype=np.float32) for p in spec.params}
    if spec.state:
        from common.core.oracle import initial_state  # the oracle imports nothing of this module

        state = initial_state(spec) if state is None else state
        ordered |= {s.name: np.asarray(state[s.name], dtype=np.float32) for s in spec.state}
    safetensors_io.write(path, ordered, metadata_for(spec, framework, version))
    return path


def export_params(backend: Backend, model: Model, path: str | Path) -> Path:
    """Write a portable safetensors file of the model's unique parameters."""
    state = backend.state_snapshot(model) if model.spec.state else None
    return write_portable(
        path, model.spec, backend.snapshot(model), backend.name, backend.framework_version(), state
    )


def header_budget(spec: ModelSpec) -> safetensors_io.HeaderBudget:
    """The most header bytes a file for ``spec`` can sensibly need: several times what
    write_portable writes, plus room for long version strings. Anything larger is refused before
    the header is parsed, so a hostile header costs nothing."""
    names = [*spec.param_shapes, *spec.state_shapes]
    needed = len(json.dumps(metadata_for(spec, "", ""))) + sum(96 + len(name) for name in names)
    return safetensors_io.HeaderBudget(64 * 1024 + 4 * needed, f"spec {shown(spec.name)}")


def read_params(
    path: str | Path, spec: ModelSpec, *, allow_nonfinite: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Everything import_params checks, without a model: the values to load, and the metadata.
    Metadata, names, dtypes and shapes are checked from the header; only then is data read."""
    values, _, metadata = read_portable(path, spec, allow_nonfinite=allow_nonfinite)
    return values, metadata


def read_portable(
    path: str | Path, spec: ModelSpec, *, allow_nonfinite: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """read_params, and the state the spec has (empty for a spec without any)."""
    with safetensors_io.open_file(path, budget=header_budget(spec)) as file:
        where, metadata = file.where, file.metadata
        if metadata.get("format") != FORMAT:
            raise ParamFileError(
                f"{where}: metadata format={shown(metadata.get('format'), 100)}, but should be "
                f"{FORMAT!r} (not written by paramparity's export_params)"
            )
        file_spec = _file_spec(where, metadata)
        if _architecture(file_spec) != _architecture(spec):
            raise ParamFileError(
                f"{where}: spec mismatch: the file holds {_describe(file_spec)}, "
                f"the model is {_describe(spec)}"
            )
        _check_ties(where, metadata, spec)
        entries = file.entries()
        for entry in entries:
            if entry.dtype != "F32":
                raise ParamFileError(
                    f"{where}: {printable(entry.name, 200)}: dtype={printable(entry.dtype, 20)}, "
                    "but should be F32"
                )
        shapes = {entry.name: entry.shape for entry in entries}
        state_shapes = {name: shapes.pop(name) for name in spec.state_shapes if name in shapes}
        try:
            check_layout(spec, shapes)
            check_state_layout(spec, state_shapes)
        except ParamFileError as error:
            raise ParamFileError(f"{where}: {error}") from None
        tensors = {name: file.load(name) for name in spec.param_shapes}
        state_tensors = {name: file.load(name) for name in spec.state_shapes}
    try:
        values = check_values(spec, tensors, allow_nonfinite=allow_nonfinite)
        state = check_state_values(spec, state_tensors)
    except ParamFileError as error:
        raise ParamFileError(f"{where}: {error}") from None
    return values, state, metadata


def import_params(
    backend: Backend, model: Model, path: str | Path, *, allow_nonfinite: bool = False
) -> dict[str, str]:
    values, state, metadata = read_portable(path, model.spec, allow_nonfinite=allow_nonfinite)
    before = backend.snapshot(model) if state else None
    backend.load_params(model, values, allow_nonfinite=allow_nonfinite)
    if state:
        try:
            backend.load_state(model, state)
        except Exception:
            backend.load_params(model, before, allow_nonfinite=True)  # all or nothing
            raise
    return metadata


def _metadata_json(where: str, metadata: dict[str, str], key: str, default: str) -> Any:
    try:
        return load_json(metadata.get(key, default))
    except ValueError as error:
        raise ParamFileError(f"{where}: metadata '{key}' is invalid: {error}") from None


def _file_spec(where: str, metadata: dict[str, str]) -> ModelSpec:
    if "spec" not in metadata:
        raise ParamFileError(f"{where}: metadata has no 'spec'")
    data = _metadata_json(where, metadata, "spec", "")
    try:
        return spec_from_dict(data)
    except SpecError as error:
        raise ParamFileError(f"{where}: metadata 'spec' is invalid: {printable(error, 300)}") from None


def _architecture(spec: ModelSpec) -> tuple[Any, ...]:
    data = spec.to_dict()
    return data["in_features"], json.dumps(data["layers"]), json.dumps(data["ties"])


def _describe(spec: ModelSpec) -> str:
    widths = "->".join([str(spec.in_features)] + [str(s.units) for s in spec.dense_slots])
    ties = f", ties {tie_groups(spec)}" if spec.ties else ", no ties"
    return printable(f"{shown(spec.name, 100)} ({widths}{ties})", 300)


def _check_ties(where: str, metadata: dict[str, str], spec: ModelSpec) -> None:
    groups = _metadata_json(where, metadata, "ties", "[]")
    file_aliases = _metadata_json(where, metadata, "aliases", "{}")
    if groups != tie_groups(spec) or file_aliases != aliases(spec):
        raise ParamFileError(
            f"{where}: tie groups {shown(groups)} (aliases {shown(file_aliases)}) contradict the "
            f"model's ties {tie_groups(spec)}"
        )
