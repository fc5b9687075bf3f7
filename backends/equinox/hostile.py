"""Hostile eqx.tree_serialise_leaves files, made on the fly for the conformance suite: each must
be refused with one ParamFileError, leave the model unchanged, and stay small in time and memory.
The format is one .npy record per array leaf, in leaf order, with no names. The classes every
backend covers come from common.core.hostile_native, made with ``write_entries``."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np

from common.core.hostile_native import declared_files


class Evil:
    def __reduce__(self):
        return (print, ("pwned by a pickle inside a .npy record",))


def _arrays(backend, model) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(backend.net(model), eqx.is_array))]


def _write(change: Callable[[list[np.ndarray]], list[np.ndarray]]) -> Callable[..., None]:
    """A writer: the model's own leaves, changed, saved as tree_serialise_leaves saves a list."""

    def write(backend, model, path: str) -> None:
        eqx.tree_serialise_leaves(path + ".eqx", change(_arrays(backend, model)))

    return write


def write_entries(backend, model, path: str, entries: dict[str, np.ndarray]) -> None:
    """tree_serialise_leaves of the arrays of ``entries``, in order: the format holds no names, so
    an extra entry is an extra record."""
    eqx.tree_serialise_leaves(path + ".eqx", list(entries.values()))


def _first(make: Callable[[np.ndarray], np.ndarray]) -> Callable[..., None]:
    return _write(lambda leaves: [make(leaves[0]), *leaves[1:]])


def _huge_header(backend, model, path: str) -> None:
    """A header that claims 2**40 float32 elements (4 TiB), followed by nothing."""
    with open(path + ".eqx", "wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20)}
        )


def _trailing(backend, model, path: str) -> None:
    eqx.tree_serialise_leaves(path + ".eqx", _arrays(backend, model))
    with open(path + ".eqx", "ab") as file:
        file.write(b"\0" * 64)


# name -> writer(backend, model, path without extension); the model is a built TIED model.
FILES: dict[str, Callable[..., None]] = {
    "big-endian float32": _first(lambda a: a.astype(">f4")),
    "object array (a pickle inside the record)": _first(lambda a: np.array([Evil()], dtype=object)),
    "transposed shape": _first(lambda a: np.ascontiguousarray(a.T)),
    "Fortran order": _first(np.asfortranarray),
    "header claiming 2**40 elements": _huge_header,
    "one leaf missing": _write(lambda leaves: leaves[:-1]),
    "bytes after the last leaf": _trailing,
    **declared_files(write_entries),
}
