"""Hostile torch.save files, made on the fly for the conformance suite: each must be refused with
one ParamFileError, leave the model unchanged, and stay small in time and memory."""

from __future__ import annotations

from collections.abc import Callable

import torch


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
    "float64": lambda backend, model, path: _write(path, _set("0.weight", lambda t: t.double()), model),
    "int64": lambda backend, model, path: _write(path, _set("0.bias", lambda t: t.long()), model),
    "view into a larger storage": lambda backend, model, path: _write(
        path, _set("0.bias", lambda t: torch.zeros(1000)[: t.numel()]), model
    ),
    "not a state_dict": lambda backend, model, path: torch.save([1, 2, 3], path + ".pt"),
}
