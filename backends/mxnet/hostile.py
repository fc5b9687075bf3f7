"""Hostile MXNet .params files, made on the fly for the conformance suite. MXNet's reader is
native code: these crash or exhaust memory inside ``npx.load``, so they show that the reader runs
isolated (common.core.isolate) and that its failure comes back as one ParamFileError."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable

import numpy as np

from common.core.hostile_native import FormatCannotHold, declared_files

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # MXNet 1.9.1 on numpy's old aliases
    from mxnet import np as mnp
    from mxnet import npx

# The NDArray format has no uint64 (MXNet's dtype table stops at int64).
CANNOT_HOLD = ("uint64",)


def write_entries(backend, model, path: str, entries: dict[str, np.ndarray]) -> None:
    """npx.save of exactly ``entries`` (the format save_parameters writes), in their dtypes."""
    arrays = {}
    for key, value in entries.items():
        if value.dtype.name in CANNOT_HOLD:
            raise FormatCannotHold(f"MXNet's NDArray format cannot hold {value.dtype}")
        arrays[key] = mnp.array(value, dtype=value.dtype)
    npx.save(path + ".params", arrays)


# Offsets in the NDArray list format save_parameters writes: u64 magic, u64 reserved, u64 count,
# then the first array: u32 magic, i32 storage type, i32 ndim, i64 dims...
_FIRST_NDIM = 32


def _patched(model, path: str, patch: Callable[[bytearray], None]) -> None:
    model_file = path + ".params"
    model.native.save_parameters(model_file)
    with open(model_file, "rb") as handle:
        data = bytearray(handle.read())
    patch(data)
    with open(model_file, "wb") as handle:
        handle.write(data)


def _ndim(value: int) -> Callable[[bytearray], None]:
    return lambda data: data.__setitem__(slice(_FIRST_NDIM, _FIRST_NDIM + 4), struct.pack("<i", value))


def _first_dims(*dims: int) -> Callable[[bytearray], None]:
    def patch(data: bytearray) -> None:
        start = _FIRST_NDIM + 4
        data[start : start + 8 * len(dims)] = struct.pack(f"<{len(dims)}q", *dims)

    return patch


FILES: dict[str, Callable[..., None]] = {
    "ndim -1 (segfaults npx.load)": lambda backend, model, path: _patched(model, path, _ndim(-1)),
    "dims of 2**17 x 2**17 in a 1 KB file (64 GB allocation)": lambda backend, model, path: _patched(
        model, path, _first_dims(2**17, 2**17)
    ),
    **declared_files(write_entries, cannot_hold=CANNOT_HOLD),
}
