"""Hostile torch.save files, made on the fly for the conformance suite: each must be refused with
one ParamFileError, leave the model unchanged, and stay small in time and memory. The classes
every backend covers (other dtypes, float64 overflow, long names, FIFOs...) come from
common.core.hostile_native, made with ``write_entries``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from common.core.hostile_native import declared_files


def write_entries(backend, model, path: str, entries: dict[str, np.ndarray]) -> None:
    """torch.save of a state_dict holding exactly ``entries``, in their dtypes."""
    torch.save({key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in entries.items()}, path + ".pt")


def _write(path: str, change: Callable[[dict], None], model) -> None:
    state = {key: value.clone() for key, value in model.native.state_dict().items()}
    change(state)
    torch.save(state, path + ".pt")


def _set(key: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    return lambda state: state.__setitem__(key, make(state[key]))


# name -> writer(backend, model, path without extension); the model is a built TIED model.
FILES: dict[str, Callable[..., None]] = {
    "stride-0 expanded tensor (2 GB on copy)": lambda backend, model, path: _write(
        path, _set("0.weight", lambda t: torch.zeros(1, 1).expand(2**14, 2**15)), model
    ),
    "complex64": lambda backend, model, path: _write(
        path, _set("0.weight", lambda t: t.to(torch.complex64)), model
    ),
    "view into a larger storage": lambda backend, model, path: _write(
        path, _set("0.bias", lambda t: torch.zeros(1000)[: t.numel()]), model
    ),
    "not a state_dict": lambda backend, model, path: torch.save([1, 2, 3], path + ".pt"),
    **declared_files(write_entries),
}
