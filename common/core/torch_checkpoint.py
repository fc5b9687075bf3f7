"""Files in the convention of ``safetensors.torch.save_model``, read and written without torch.

``save_model(model, filename)`` stores ``model.state_dict()``, reducing each group of tensors that
share storage (a tie) to one: it keeps the group's first name in string order (``sorted(names)[0]``,
so "10.weight" is kept over "2.weight"), deletes the others and records each of them in the file's
metadata as ``dropped name -> kept name``; it adds no other metadata. ``load_model`` works out the
model's own tie groups and accepts exactly those dropped names as missing.

A torch ``nn.Sequential`` names a parameter by its child indices, so the tensor of canonical
position ``layers.0.2.weight`` is ``0.2.weight``, and a tie of the spec is a group of such names.
Reading trusts the spec, never the file: from the header alone, before any data is read, every
tensor must be a state_dict key of the spec, F32, of the spec's shape, and every name the metadata
records as dropped must be a position of the spec whose kept name is stored and is its partner in
one of the spec's ties; every position of a tie must be stored or recorded as dropped. Then, from
the data, two stored copies of one tied parameter must be equal, and every value finite. Any
refusal is one ParamFileError line naming the file; nothing outside the file is read (the reader
is ``safetensors_io``'s: a regular file, framing and header budget checked before the reference
parser sees it), and an import changes the model only once the whole file has passed.

Parameters only: torch saves a BatchNorm's running statistics and an int64 ``num_batches_tracked``
as well, which this convention does not carry here; a spec with state is refused (the portable
format carries state).

``read_checkpoint`` tells the two conventions apart by the metadata: a paramparity portable file
says ``format: paramparity/1``; anything else is read as a save_model file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.core import portable, safetensors_io
from common.core.params import check_values, listed
from common.core.spec import ModelSpec
from common.core.untrusted import printable, shown
from common.errors import ParamFileError

if TYPE_CHECKING:  # the interface calls nothing here, so this is a one-way dependency
    from common.core.interface import Backend, Model

SAVE_MODEL = "save_model"
PORTABLE = "portable"
CONVENTIONS = (SAVE_MODEL, PORTABLE)
# A metadata key shaped like a state_dict key ("0.2.weight", "1.running_mean") is a drop record;
# any other key ("format": "pt", as Hugging Face writes) is the saver's own note, and ignored.
_STATE_DICT_KEY = re.compile(r"[0-9]+(\.[0-9]+)*\.[A-Za-z_][A-Za-z0-9_]*")


def torch_key(position: str) -> str:
    """The state_dict key of a canonical position: ``layers.0.2.weight`` -> ``0.2.weight``."""
    return position.removeprefix("layers.")


def torch_keys(spec: ModelSpec) -> dict[str, str]:
    """Every state_dict key of ``spec`` (a tied parameter has one per position) -> the canonical
    unique parameter it holds."""
    return {torch_key(position): p.name for p in spec.params for position in p.positions}


def save_model_layout(spec: ModelSpec) -> tuple[dict[str, str], dict[str, str]]:
    """What save_model writes for ``spec``: the key kept for each unique parameter, and the
    metadata (each dropped key -> the key kept in its place)."""
    kept, dropped = {}, {}
    for p in spec.params:
        names = sorted(torch_key(position) for position in p.positions)
        kept[p.name] = names[0]
        dropped |= {name: names[0] for name in names[1:]}
    return kept, dropped


def header_budget(spec: ModelSpec) -> safetensors_io.HeaderBudget:
    """The most header bytes a save_model file of ``spec`` can sensibly need (every key stored,
    every tie recorded, room for the saver's own notes), several times over."""
    keys = torch_keys(spec)
    needed = sum(96 + len(key) for key in keys) + sum(8 + 2 * len(key) for key in keys)
    return safetensors_io.HeaderBudget(64 * 1024 + 4 * needed, f"spec {shown(spec.name)}")


def write_torch_checkpoint(
    path: str | Path, spec: ModelSpec, values: Mapping[str, np.ndarray]
) -> dict[str, str]:
    """Write ``values`` (canonical unique parameters) as save_model would write a torch model of
    ``spec`` holding them: torch keys, tensors in name order (as the reference writer orders
    them), each tie stored once under its first key and its other keys recorded in the metadata.
    Written whole or not at all. Returns that metadata."""
    _refuse_state(printable(str(path)), spec)
    checked = check_values(spec, values)
    kept, dropped = save_model_layout(spec)
    tensors = {key: checked[owner] for key, owner in sorted((key, owner) for owner, key in kept.items())}
    metadata = dict(sorted(dropped.items()))
    safetensors_io.write(path, tensors, metadata)
    return metadata


def read_torch_checkpoint(
    path: str | Path, spec: ModelSpec, *, allow_nonfinite: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The canonical unique parameters of a save_model file of ``spec``, and its metadata; see the
    module docstring for every check."""
    _refuse_state(printable(str(path)), spec)
    keys = torch_keys(spec)
    with safetensors_io.open_file(path, budget=header_budget(spec)) as file:
        where, metadata = file.where, file.metadata
        _check_metadata(where, metadata)
        if metadata.get("format") == portable.FORMAT:
            raise ParamFileError(
                f"{where}: a paramparity portable file (format={portable.FORMAT!r}), not a save_model one"
            )
        stored = [_checked_entry(where, spec, keys, entry) for entry in file.entries()]
        dropped = _drop_records(where, spec, keys, metadata, set(stored))
        copies = _stored_copies(where, spec, set(stored), dropped)
        tensors = {name: file.load(name) for name in stored}
    values = {}
    for owner, names in copies.items():
        first = tensors[names[0]]
        for other in names[1:]:
            if not np.array_equal(tensors[other], first, equal_nan=True):
                raise ParamFileError(
                    f"{where}: {printable(other)} and {printable(names[0])} are two stored copies of "
                    f"{owner}, which the spec ties, but their values differ"
                )
        values[owner] = first
    try:
        return check_values(spec, values, allow_nonfinite=allow_nonfinite), metadata
    except ParamFileError as error:
        raise ParamFileError(f"{where}: {error}") from None


def import_torch_checkpoint(
    backend: Backend, model: Model, path: str | Path, *, allow_nonfinite: bool = False
) -> dict[str, str]:
    """Load a save_model file into ``model``: checked in full first, then loaded atomically
    (``load_params``), so a refused file leaves the model as it was. Returns the metadata."""
    values, metadata = read_torch_checkpoint(path, model.spec, allow_nonfinite=allow_nonfinite)
    backend.load_params(model, values, allow_nonfinite=allow_nonfinite)
    return metadata


@dataclass(frozen=True)
class Checkpoint:
    """What a parameter file of either convention holds for a spec, checked."""

    convention: str  # SAVE_MODEL or PORTABLE
    values: dict[str, np.ndarray]  # canonical unique parameters
    metadata: dict[str, str]
    state: dict[str, np.ndarray] = field(default_factory=dict)  # a portable file's running statistics


def convention_of(path: str | Path, spec: ModelSpec) -> str:
    """PORTABLE for a file whose metadata says paramparity's format, else SAVE_MODEL (from the
    header alone, within the larger of the two conventions' budgets)."""
    budget = max(portable.header_budget(spec), header_budget(spec), key=lambda b: b.max_bytes)
    with safetensors_io.open_file(path, budget=budget) as file:
        return PORTABLE if file.metadata.get("format") == portable.FORMAT else SAVE_MODEL


def read_checkpoint(path: str | Path, spec: ModelSpec, *, allow_nonfinite: bool = False) -> Checkpoint:
    """A file of either convention, told apart by ``convention_of``, with every check of its reader."""
    if convention_of(path, spec) == PORTABLE:
        values, state, metadata = portable.read_portable(path, spec, allow_nonfinite=allow_nonfinite)
        return Checkpoint(PORTABLE, values, metadata, state)
    values, metadata = read_torch_checkpoint(path, spec, allow_nonfinite=allow_nonfinite)
    return Checkpoint(SAVE_MODEL, values, metadata)


def import_checkpoint(backend: Backend, model: Model, path: str | Path) -> Checkpoint:
    """Load a file of either convention into ``model``, all or nothing; returns what it held."""
    checkpoint = read_checkpoint(path, model.spec)
    before = backend.snapshot(model) if checkpoint.state else None
    backend.load_params(model, checkpoint.values)
    if checkpoint.state:
        try:
            backend.load_state(model, checkpoint.state)
        except Exception:
            backend.load_params(model, before, allow_nonfinite=True)  # all or nothing
            raise
    return checkpoint


def tie_summary(spec: ModelSpec) -> list[str]:
    """Each tie as its torch keys and what save_model records: ``4.weight -> 2.weight``."""
    return [f"{dropped} -> {kept}" for dropped, kept in save_model_layout(spec)[1].items()]


# -- checks ---------------------------------------------------------------------------------------
def _refuse_state(where: str, spec: ModelSpec) -> None:
    if spec.state:
        raise ParamFileError(
            f"{where}: spec {shown(spec.name)} has BatchNorm state, which the save_model convention "
            "does not carry here (torch stores it as buffers, num_batches_tracked as int64); "
            "use the portable format"
        )


def _check_metadata(where: str, metadata: object) -> None:
    # The reference parser already refuses anything but text to text; this keeps the promise
    # independent of its version.
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ParamFileError(f"{where}: metadata is not a map of text to text")


def _checked_entry(where: str, spec: ModelSpec, keys: dict[str, str], entry: safetensors_io.Entry) -> str:
    name = printable(entry.name, 200)
    if entry.name not in keys:
        raise ParamFileError(
            f"{where}: unexpected tensor {shown(entry.name)}: not a state_dict key of spec "
            f"{shown(spec.name)}; its keys: {listed(sorted(keys))}"
        )
    if entry.dtype != "F32":
        raise ParamFileError(f"{where}: {name}: dtype={printable(entry.dtype, 20)}, but should be F32")
    expected = spec.param_shapes[keys[entry.name]]
    if entry.shape != expected:
        raise ParamFileError(f"{where}: {name}: shape={shown(entry.shape)}, but should be {expected}")
    return entry.name


def _drop_records(
    where: str, spec: ModelSpec, keys: dict[str, str], metadata: dict[str, str], stored: set[str]
) -> dict[str, str]:
    """The metadata's ``dropped -> kept`` records, each checked against the spec's ties."""
    records, groups = {}, {}
    for key, owner in keys.items():
        groups.setdefault(owner, []).append(key)
    for dropped, kept in metadata.items():
        if not _STATE_DICT_KEY.fullmatch(dropped):
            continue
        said = f"metadata records {shown(dropped)} as saved under {shown(kept)}"
        if dropped not in keys:
            raise ParamFileError(
                f"{where}: {said}, but spec {shown(spec.name)} has no parameter {shown(dropped)}"
            )
        if dropped in stored:
            raise ParamFileError(f"{where}: {said}, but the file stores {shown(dropped)} too")
        partners = [key for key in groups[keys[dropped]] if key != dropped]
        if kept not in partners:
            ties = f"tied to {', '.join(partners)}" if partners else "tied to nothing"
            raise ParamFileError(
                f"{where}: {said}, a tie that contradicts spec {shown(spec.name)}: there {dropped} is {ties}"
            )
        if kept not in stored:
            raise ParamFileError(f"{where}: {said}, but the file stores no {kept}")
        records[dropped] = kept
    return records


def _stored_copies(
    where: str, spec: ModelSpec, stored: set[str], dropped: dict[str, str]
) -> dict[str, list[str]]:
    """For each unique parameter, its stored keys; every position is stored or recorded."""
    copies = {}
    for p in spec.params:
        names = [torch_key(position) for position in p.positions]
        held = [name for name in names if name in stored]
        if not held:
            raise ParamFileError(
                f"{where}: missing parameter {p.name}: no tensor {' or '.join(names)} "
                f"for spec {shown(spec.name)}"
            )
        unrecorded = [name for name in names if name not in stored and name not in dropped]
        if unrecorded:
            raise ParamFileError(
                f"{where}: spec {shown(spec.name)} ties {', '.join(names)}, but the file stores only "
                f"{', '.join(held)} and its metadata records no tie for {', '.join(unrecorded)} "
                f"(save_model writes {json.dumps({unrecorded[0]: held[0]})}); refused, not guessed"
            )
        copies[p.name] = held
    return copies
