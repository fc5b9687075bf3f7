"""Portable parameters: export from one framework, import into any other, ties included.

A file holds each unique parameter once, under its canonical name and in canonical layout
(weights (out, in)); tied positions are recorded as aliases in the metadata, never as copies.
Import validates everything (format, spec, ties, names, shapes, dtypes, finiteness) before the
model is touched, and the backend's load_params restores the old values if a write still fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.core import safetensors_io
from common.core.params import check_values
from common.core.spec import ModelSpec, spec_from_dict
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
        "layout": "canonical: weight (out, in), bias (out,)",
        "ties": json.dumps(tie_groups(spec)),
        "aliases": json.dumps(aliases(spec), sort_keys=True),
    }


def write_portable(
    path: str | Path,
    spec: ModelSpec,
    values: dict[str, np.ndarray],
    framework: str = "numpy",
    version: str = np.__version__,
) -> Path:
    """Write unique parameters (canonical names and layout) with the metadata import checks."""
    path = Path(path)
    ordered = {p.name: np.asarray(values[p.name], dtype=np.float32) for p in spec.params}
    safetensors_io.write(path, ordered, metadata_for(spec, framework, version))
    return path


def export_params(backend: Backend, model: Model, path: str | Path) -> Path:
    """Write a portable safetensors file of the model's unique parameters."""
    return write_portable(
        path, model.spec, backend.snapshot(model), backend.name, backend.framework_version()
    )


def read_params(
    path: str | Path, spec: ModelSpec, *, allow_nonfinite: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Everything import_params checks, without a model: the values to load, and the metadata."""
    tensors, metadata = safetensors_io.read(path)
    where = str(path)
    if metadata.get("format") != FORMAT:
        raise ParamFileError(
            f"{where}: metadata format={metadata.get('format')!r}, but should be {FORMAT!r} "
            "(not written by paramparity's export_params)"
        )
    file_spec = _file_spec(where, metadata)
    if _architecture(file_spec) != _architecture(spec):
        raise ParamFileError(
            f"{where}: spec mismatch: the file holds {_describe(file_spec)}, the model is {_describe(spec)}"
        )
    _check_ties(where, metadata, spec)
    for name, array in tensors.items():
        if array.dtype != np.float32:
            code = safetensors_io.CODES.get(array.dtype.str, str(array.dtype))
            raise ParamFileError(f"{where}: {name}: dtype={code}, but should be F32")
    try:
        values = check_values(spec, tensors, allow_nonfinite=allow_nonfinite)
    except ParamFileError as error:
        raise ParamFileError(f"{where}: {error}") from None
    return values, metadata


def import_params(
    backend: Backend, model: Model, path: str | Path, *, allow_nonfinite: bool = False
) -> dict[str, str]:
    values, metadata = read_params(path, model.spec, allow_nonfinite=allow_nonfinite)
    backend.load_params(model, values, allow_nonfinite=allow_nonfinite)
    return metadata


def _file_spec(where: str, metadata: dict[str, str]) -> ModelSpec:
    try:
        return spec_from_dict(json.loads(metadata["spec"]))
    except KeyError:
        raise ParamFileError(f"{where}: metadata has no 'spec'") from None
    except (json.JSONDecodeError, SpecError) as error:
        raise ParamFileError(f"{where}: metadata 'spec' is invalid: {error}") from None


def _architecture(spec: ModelSpec) -> tuple[Any, ...]:
    data = spec.to_dict()
    return data["in_features"], json.dumps(data["layers"]), json.dumps(data["ties"])


def _describe(spec: ModelSpec) -> str:
    widths = "->".join([str(spec.in_features)] + [str(s.units) for s in spec.dense_slots])
    ties = f", ties {tie_groups(spec)}" if spec.ties else ", no ties"
    return f"{spec.name!r} ({widths}{ties})"


def _check_ties(where: str, metadata: dict[str, str], spec: ModelSpec) -> None:
    try:
        groups, file_aliases = (
            json.loads(metadata.get("ties", "[]")),
            json.loads(metadata.get("aliases", "{}")),
        )
    except json.JSONDecodeError:
        raise ParamFileError(f"{where}: metadata 'ties' or 'aliases' is not JSON") from None
    if groups != tie_groups(spec) or file_aliases != aliases(spec):
        raise ParamFileError(
            f"{where}: tie groups {groups} (aliases {file_aliases}) contradict the model's "
            f"ties {tie_groups(spec)}"
        )
