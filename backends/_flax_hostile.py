"""Hostile Flax msgpack files (linen and NNX), made on the fly for the conformance suite: each must
be refused with one ParamFileError, leave the model unchanged, and stay small in time and memory.
The classes every backend covers come from common.core.hostile_native, made with
``write_entries``; msgpack_restore casts nothing, so other dtypes reach the float32 rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flax import serialization

from common.core.hostile_native import declared_files, own_entries


def _nested(entries: dict[str, Any]) -> dict[str, Any]:
    """Slash paths ("params/layers_0/kernel") as the nested dicts msgpack files hold."""
    tree: dict[str, Any] = {}
    for key, value in entries.items():
        *groups, leaf = key.split("/")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
    return tree


def _save(path: str, tree: Any) -> None:
    with open(path + ".msgpack", "wb") as file:
        file.write(serialization.to_bytes(tree))


def write_entries(backend, model, path: str, entries: dict[str, np.ndarray]) -> None:
    """The msgpack file serialization.to_bytes writes, holding exactly ``entries``."""
    _save(path, _nested(entries))


def _slash_key_beside_nested(backend, model, path: str) -> None:
    """The first entry twice: nested as the framework writes it, and again, changed, under one key
    holding "/" ({"params": {"layers_0": {"kernel": w}, "layers_0/kernel": w + 1}})."""
    entries = own_entries(backend, model)
    key, value = next(iter(entries.items()))
    tree = _nested(entries)
    top, rest = key.split("/", 1)
    tree[top][rest] = value + 1
    _save(path, tree)


def _retyped(make: Callable[[np.ndarray], Any]) -> Callable[..., None]:
    def write(backend, model, path: str) -> None:
        entries: dict[str, Any] = own_entries(backend, model)
        first = next(iter(entries))
        entries[first] = make(entries[first])
        _save(path, _nested(entries))

    return write


# name -> writer(backend, model, path without extension); the model is a built TIED model.
FILES: dict[str, Callable[..., None]] = {
    "a key holding '/' beside the nested key it spells": _slash_key_beside_nested,
    "complex64 entry": _retyped(lambda value: value.astype(np.complex64)),
    "a string in place of an array": _retyped(lambda value: "not an array"),
    "a list in place of the tree": lambda backend, model, path: _save(path, [1, 2, 3]),
    **declared_files(write_entries),
}
