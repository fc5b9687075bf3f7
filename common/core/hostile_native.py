"""Hostile native files, framework-free: the classes every backend's declared hostile files cover,
built on the writer its declaration names (``native_writer``), and the changes ``make fuzz``
draws (``common.core.generate.native_changes``) applied to a model's own entries.

A native writer is ``write(backend, model, path, entries)``: the framework's own file at
``path + backend.native_file_suffix`` holding exactly ``entries`` (native key -> numpy array, in
that order, of any dtype), as the framework's own save would write it. A format that cannot hold
an array's dtype raises ``FormatCannotHold``. Every class here must be refused by the backend's
reader, with one ParamFileError line that names the file, and leave the model unchanged:

- other dtypes (integers, float16, float64): one dtype rule, float32, for every reader;
- float64 beyond float32's range: inf once cast;
- NaN and Inf in float32: refused by load_params (``allow_nonfinite`` is not given);
- an extra entry with an oversized name: the error stays one bounded line;
- a parameter missing (every stored copy of it);
- a FIFO or a device in place of the file: refused at once, before the reader's time limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from common.core.interface import Backend, Model

__all__ = [
    "KINDS",
    "OVERFLOW",
    "RETYPED",
    "FormatCannotHold",
    "NativeChange",
    "declared_files",
    "own_entries",
    "write_changed",
]

Entries = dict[str, np.ndarray]
NativeWriter = Callable[["Backend", "Model", str, Entries], None]
FileWriter = Callable[["Backend", "Model", str], None]

OVERFLOW = 1e300  # a finite float64 that is inf in float32
LONG_NAME = 100_000  # characters in an oversized entry name


class FormatCannotHold(TypeError):
    """The native format has no way to store this dtype (MXNet has no uint64)."""


def _integers(dtype: type) -> Callable[[np.ndarray], np.ndarray]:
    return lambda value: np.round(np.abs(value) * 100).astype(dtype)


# Other dtypes, each a float32 value converted (integers scaled, so they are not all 0).
RETYPED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "int64": _integers(np.int64),
    "uint64": _integers(np.uint64),
    "int32": _integers(np.int32),
    "float16": lambda value: value.astype(np.float16),
    "float64": lambda value: value.astype(np.float64),
}

# Every kind of change NativeChange can make; the rest of its fields say where and what.
KINDS = ("retype", "overflow", "nonfinite", "long name", "missing", "fifo", "device")


@dataclass(frozen=True)
class NativeChange:
    """One change to a model's own native file: ``kind`` (one of KINDS), the entry it touches
    (``index`` into the entries, modulo their count), the dtype (``retype``) or value
    (``overflow``, ``nonfinite``), and the name's length (``long name``)."""

    kind: str
    index: int = 0
    dtype: str = "float64"
    value: float = OVERFLOW
    length: int = LONG_NAME

    def describe(self) -> str:
        detail = {
            "retype": self.dtype,
            "overflow": f"float64 {self.value:g}",
            "nonfinite": f"float32 {self.value}",
            "long name": f"{self.length} characters",
        }.get(self.kind, "")
        return f"{self.kind} {detail} at entry {self.index}".replace("  ", " ")


def own_entries(backend: Backend, model: Model) -> Entries:
    """What the model's own native file holds: each key's owner value in native layout, float32,
    in the order of ``native_file_keys``."""
    keys = backend.native_file_keys(model)
    values = {owner: backend.get_param(model, owner) for owner in set(keys.values())}
    return {
        key: np.array(backend.native_of(model.spec, owner, values[owner]), dtype=np.float32)
        for key, owner in keys.items()
    }


def changed(entries: Entries, change: NativeChange, owners: dict[str, str]) -> Entries:
    """``entries`` with ``change`` made (FIFO and device changes are made to the path instead);
    ``owners`` maps each key to its canonical owner, so a missing parameter drops every stored
    copy of it (a tie stored twice still has its value in the other copy)."""
    entries = dict(entries)
    key = list(entries)[change.index % len(entries)]
    value = entries[key]
    if change.kind == "retype":
        entries[key] = RETYPED[change.dtype](value)
    elif change.kind in ("overflow", "nonfinite"):
        flat = value.astype(np.float64 if change.kind == "overflow" else np.float32).ravel()
        flat[change.index % flat.size] = change.value
        entries[key] = flat.reshape(value.shape)
    elif change.kind == "long name":
        entries["n" * max(1, change.length)] = value
    elif change.kind == "missing":
        entries = {k: v for k, v in entries.items() if owners.get(k) != owners[key]}
    return entries


def write_changed(
    writer: NativeWriter, backend: Backend, model: Model, path: str, change: NativeChange
) -> None:
    """The model's own file, at ``path + suffix``, with ``change`` made; for ``fifo`` a named
    pipe there, for ``device`` a link to /dev/zero."""
    file = path + backend.native_file_suffix
    if change.kind == "fifo":
        os.mkfifo(file)
    elif change.kind == "device":
        os.symlink("/dev/zero", file)
    else:
        owners = backend.native_file_keys(model)
        writer(backend, model, path, changed(own_entries(backend, model), change, owners))


def declared_files(writer: NativeWriter, *, cannot_hold: tuple[str, ...] = ()) -> dict[str, FileWriter]:
    """Hostile files for a backend's declaration (its ``hostile`` FILES), one per class above,
    made with its ``writer``: each other dtype (but those in ``cannot_hold``), float64 beyond
    float32's range, NaN, an oversized entry name, a missing parameter, a FIFO and /dev/zero."""
    changes = {
        **{
            f"{dtype} entry": NativeChange("retype", dtype=dtype)
            for dtype in RETYPED
            if dtype not in cannot_hold
        },
        "float64 1e300 (inf in float32)": NativeChange("overflow", index=1),
        "float32 NaN": NativeChange("nonfinite", value=float("nan")),
        f"an extra entry named with {LONG_NAME:,} characters": NativeChange("long name"),
        "a parameter missing": NativeChange("missing", index=-1),
        "a FIFO": NativeChange("fifo"),
        "a link to /dev/zero": NativeChange("device"),
    }
    return {name: _file_writer(writer, change) for name, change in changes.items()}


def _file_writer(writer: NativeWriter, change: NativeChange) -> FileWriter:
    def write(backend: Any, model: Any, path: str) -> None:
        write_changed(writer, backend, model, path, change)

    return write
