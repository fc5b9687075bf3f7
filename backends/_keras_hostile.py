"""Hostile Keras .weights.h5 files, made on the fly with h5py for the conformance suite: each
points outside itself or lies about its size, and must be refused before any data is read."""

from __future__ import annotations

from collections.abc import Callable

import h5py
import numpy as np

from common.core.hostile_native import declared_files

TARGET = "/etc/passwd"  # a file the parameters must never see a byte of


def write_entries(backend, model, path: str, entries: dict[str, np.ndarray]) -> None:
    """A .weights.h5 file holding exactly ``entries``: one dataset per key (a slash path, its
    groups made on the way), in their dtypes."""
    with h5py.File(path + backend.native_file_suffix, "w") as store:
        for key, value in entries.items():
            store.create_dataset(key, data=value)


def _rewrite(backend, model, path: str, change: Callable[[h5py.File, str], None]) -> None:
    """The adapter's own file for ``model``, with its first dataset replaced by ``change``."""
    file = path + ".weights.h5"
    backend.save_native_file(model, path)
    with h5py.File(file, "r+") as store:
        names: list[str] = []
        store.visititems(lambda key, node: names.append(key) if isinstance(node, h5py.Dataset) else None)
        first = names[0]
        del store[first]
        change(store, first)


def _external_storage(store: h5py.File, name: str) -> None:
    store.create_dataset(name, shape=(4, 8), dtype="<f4", external=[(TARGET, 0, 128)])


def _virtual(store: h5py.File, name: str) -> None:
    layout = h5py.VirtualLayout(shape=(4, 8), dtype="<f4")
    layout[:] = h5py.VirtualSource(TARGET, "data", shape=(4, 8))
    store.create_virtual_dataset(name, layout)


def _soft_link(store: h5py.File, name: str) -> None:
    store[name] = h5py.SoftLink("/elsewhere")


def _external_link(store: h5py.File, name: str) -> None:
    store[name] = h5py.ExternalLink(TARGET, "/data")


def _huge(store: h5py.File, name: str) -> None:
    store.create_dataset(name, shape=(2, 2**28), dtype="<f4", chunks=(1, 1024))  # 2 GB, unwritten


FILES: dict[str, Callable[..., None]] = {
    "external storage pointing at /etc/passwd": lambda backend, model, path: _rewrite(
        backend, model, path, _external_storage
    ),
    "virtual dataset over another file": lambda backend, model, path: _rewrite(
        backend, model, path, _virtual
    ),
    "soft link": lambda backend, model, path: _rewrite(backend, model, path, _soft_link),
    "external link to another file": lambda backend, model, path: _rewrite(
        backend, model, path, _external_link
    ),
    "(2, 2**28) dataset (4.6 GB before the shape check)": lambda backend, model, path: _rewrite(
        backend, model, path, _huge
    ),
    **declared_files(write_entries),
}
