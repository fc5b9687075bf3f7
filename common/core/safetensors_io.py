"""safetensors files: read with the reference implementation (``safetensors``), written here.

Layout: an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and byte range, then the raw little-endian data. Reading never executes anything from
the file. Before the reference parser sees a file, this module checks what it can without
allocating anything: a regular file (not a FIFO or a device), a bounded size, and a declared
header length that fits the file, the format's limit and the caller's budget (a spec's). Every
refusal, the reference's included, is one ParamFileError line that names the file, with every name
and message from the file escaped (``untrusted.printable``).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from common.atomic import write_atomically
from common.core.untrusted import descriptor_path, open_regular, printable, read_exactly
from common.errors import ParamFileError

DTYPES = {
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
    "I8": "i1",
    "I16": "<i2",
    "I32": "<i4",
    "I64": "<i8",
    "U8": "u1",
    "U16": "<u2",
    "U32": "<u4",
    "U64": "<u8",
    "BOOL": "?",
}
CODES = {np.dtype(v).str: k for k, v in DTYPES.items()}
MAX_HEADER = 100_000_000  # the reference implementation's limit (MAX_HEADER_SIZE), in bytes
MAX_FILE = 8 * 1024**3  # paramparity's own: far above any model it compares


def write(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Tensors in the given order (the reference writer sorts them), metadata as given; written
    to a temporary file and renamed, so a failed write leaves an earlier file intact."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset, blobs = 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        code = CODES.get(
            array.dtype.newbyteorder("<").str if array.dtype.byteorder == ">" else array.dtype.str
        )
        if code is None:
            raise ValueError(f"{name}: dtype {array.dtype} has no safetensors code")
        data = array.astype(DTYPES[code], copy=False).tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8-byte alignment
    write_atomically(path, struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


@dataclass(frozen=True)
class Entry:
    """What the header says about one tensor; nothing of its data is read."""

    name: str
    dtype: str  # the safetensors code: "F32", "BF16"...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class HeaderBudget:
    """The most header bytes a caller expects, and why (e.g. "spec 'tied'")."""

    max_bytes: int
    reason: str


class TensorFile:
    """A file whose header the reference reader accepted. Names are in file (offset) order; a
    tensor's data is read only when ``load`` asks for it."""

    def __init__(self, where: str, handle, metadata: dict[str, str]) -> None:
        self.where = where
        self._handle = handle
        self.metadata = metadata
        self.names: list[str] = list(handle.offset_keys())

    def entry(self, name: str) -> Entry:
        view = self._handle.get_slice(name)
        return Entry(name, view.get_dtype(), tuple(view.get_shape()))

    def entries(self) -> list[Entry]:
        return [self.entry(name) for name in self.names]

    def load(self, name: str) -> np.ndarray:
        try:
            array = self._handle.get_tensor(name)
        except Exception as error:  # e.g. BF16 or F8 data, which numpy cannot hold
            raise ParamFileError(
                f"{self.where}: {printable(name, 200)}: cannot load its data "
                f"({type(error).__name__}: {printable(error, 200)})"
            ) from None
        return np.array(array, dtype=array.dtype.newbyteorder("="), copy=True)


@contextlib.contextmanager
def open_file(
    path: str | os.PathLike, *, budget: HeaderBudget | None = None, max_bytes: int = MAX_FILE
) -> Iterator[TensorFile]:
    """Check the framing, then let the reference reader parse and validate the header."""
    where = printable(os.fspath(path))
    with open_regular(path, max_bytes=max_bytes, error=ParamFileError) as (fd, size):
        _check_framing(fd, size, where, budget)
        source = descriptor_path(fd, path)  # the very file checked
        try:
            # pread: no mmap, so a file truncated while it is read is an error, not a SIGBUS.
            handle = safe_open(source, framework="np", backend="pread")
        except Exception as error:
            raise ParamFileError(f"{where}: {_reason(error)}") from None
        with handle:
            try:
                metadata = handle.metadata() or {}
            except Exception as error:
                raise ParamFileError(f"{where}: {_reason(error)}") from None
            yield TensorFile(where, handle, dict(metadata))


def read(
    path: str | os.PathLike, *, budget: HeaderBudget | None = None, max_bytes: int = MAX_FILE
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor (in file order) and the metadata; ParamFileError for anything malformed."""
    with open_file(path, budget=budget, max_bytes=max_bytes) as file:
        return {name: file.load(name) for name in file.names}, file.metadata


def _check_framing(fd: int, size: int, where: str, budget: HeaderBudget | None) -> None:
    if size < 8:
        raise ParamFileError(f"{where}: not a safetensors file (only {size} bytes; truncated?)")
    (declared,) = struct.unpack("<Q", read_exactly(fd, 0, 8, where, ParamFileError))
    if declared > size - 8:
        raise ParamFileError(
            f"{where}: not a safetensors file, or truncated: header length {declared} "
            f"does not fit in {size} bytes"
        )
    if declared > MAX_HEADER:
        raise ParamFileError(
            f"{where}: not a safetensors file: header length {declared} is over the format's "
            f"limit of {MAX_HEADER} bytes"
        )
    if budget is not None and declared > budget.max_bytes:
        raise ParamFileError(
            f"{where}: header of {declared} bytes, far more than {budget.reason} needs "
            f"(at most {budget.max_bytes}); refused before parsing it"
        )


_HINTS = {
    "incomplete metadata": "tensor data truncated or padded",
    "invalid offset": "tensor data truncated, overlapping or with gaps",
    "header too small": "truncated",
}


def _reason(error: Exception) -> str:
    message = str(error).removeprefix("Error while deserializing header: ")
    hint = next((text for key, text in _HINTS.items() if message.startswith(key)), "")
    return f"not a valid safetensors file{f' ({hint})' if hint else ''}: {printable(message, 300)}"
