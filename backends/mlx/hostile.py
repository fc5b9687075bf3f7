"""Hostile MLX safetensors files, made on the fly for the conformance suite: each must be refused
with one ParamFileError, leave the model unchanged, and stay small in time and memory. The classes
every backend covers come from common.core.hostile_native, made with ``write_entries``."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from common.core import safetensors_io
from common.core.hostile_native import declared_files

SUFFIX = ".safetensors"


def _saved(model) -> dict[str, mx.array]:
    """What net.save_weights writes: tree_flatten(net.parameters())."""
    return dict(tree_flatten(model.native.parameters()))


def _write(key: str, make: Callable[[mx.array], mx.array]) -> Callable[..., None]:
    def write(backend, model, path: str) -> None:
        arrays = _saved(model)
        arrays[key] = make(arrays[key])
        mx.save_safetensors(path + SUFFIX, arrays)

    return write


def write_entries(backend, model, path: str, entries: dict[str, np.ndarray]) -> None:
    """A safetensors file holding exactly ``entries``, as save_weights lays it out; numpy values
    through paramparity's writer, since mx.save_safetensors writes no float64."""
    safetensors_io.write(path + SUFFIX, entries, {})


def _huge(backend, model, path: str) -> None:
    """A header that declares a (2**20, 2**20) float32 tensor (4 TiB) over 16 bytes of data."""
    header = json.dumps(
        {"layers.0.weight": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 16]}}
    ).encode()
    with open(path + SUFFIX, "wb") as file:
        file.write(struct.pack("<Q", len(header)) + header + bytes(16))


# name -> writer(backend, model, path without extension); the model is a built TIED model.
FILES: dict[str, Callable[..., None]] = {
    "bfloat16": _write("layers.2.weight", lambda a: a.astype(mx.bfloat16)),
    "wrong shape": _write("layers.2.weight", lambda a: mx.zeros((8, 4))),
    "extra key": lambda backend, model, path: mx.save_safetensors(
        path + SUFFIX, {**_saved(model), "layers.9.weight": mx.zeros((1, 1))}
    ),
    "tied copies differ": _write("layers.4.weight", lambda a: a + 1),
    "header declares a 4 TiB tensor": _huge,
    "a directory": lambda backend, model, path: os.mkdir(path + SUFFIX),
    **declared_files(write_entries),
}
