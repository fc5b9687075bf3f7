"""A strict reader and writer for the safetensors format, in numpy alone.

Layout: an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and byte range, then the raw little-endian data. Reading never executes anything
from the file: the header is JSON, the data goes through ``np.frombuffer``. Every inconsistency
is refused with a ParamFileError that names the file and the problem.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

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
    "BOOL": "?",
}
CODES = {np.dtype(v).str: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


def write(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
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
    Path(path).write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (in file order) and metadata; ParamFileError for anything malformed."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ParamFileError(f"{where}: cannot read: {error.strerror or error}") from None
    if len(raw) < 8:
        raise ParamFileError(f"{where}: not a safetensors file (only {len(raw)} bytes; truncated?)")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > MAX_HEADER or 8 + size > len(raw):
        raise ParamFileError(
            f"{where}: not a safetensors file, or truncated: header length {size} "
            f"does not fit in {len(raw)} bytes"
        )
    try:
        header = json.loads(raw[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ParamFileError(f"{where}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ParamFileError(f"{where}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ParamFileError(f"{where}: __metadata__ must map strings to strings")
    buffer = memoryview(raw)[8 + size :]
    tensors, spans = {}, []
    for name, entry in header.items():
        tensors[name] = _tensor(where, name, entry, buffer)
        spans.append(tuple(entry["data_offsets"]))
    expected = 0
    for begin, end in sorted(spans):
        if begin != expected:
            raise ParamFileError(f"{where}: tensor data overlaps or leaves a gap at byte {expected}")
        expected = end
    if expected != len(buffer):
        raise ParamFileError(
            f"{where}: truncated or padded: tensors cover {expected} of {len(buffer)} data bytes"
        )
    return tensors, dict(metadata)


def _tensor(where: str, name: str, entry: object, buffer: memoryview) -> np.ndarray:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ParamFileError(f"{where}: {name}: entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise ParamFileError(f"{where}: {name}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ParamFileError(f"{where}: {name}: shape {shape!r} is not a list of non-negative ints")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= len(buffer)
    ):
        raise ParamFileError(
            f"{where}: {name}: data_offsets {offsets!r} fall outside the {len(buffer)} "
            "data bytes (truncated?)"
        )
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ParamFileError(
            f"{where}: {name}: {offsets[1] - offsets[0]} bytes do not hold a {dtype} "
            f"tensor of shape {tuple(shape)}"
        )
    data = np.frombuffer(buffer[offsets[0] : offsets[1]], dtype=DTYPES[dtype])
    return data.reshape(shape).astype(data.dtype.newbyteorder("="), copy=True)
