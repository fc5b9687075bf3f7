"""Portable parameters in this backend: export, import (ties kept), and bad or hostile files,
each refused with an error that names the problem, leaving the model exactly as it was."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import time

import numpy as np
import pytest

from common.core import portable, safetensors_io
from common.core.models import BOOK_SPECS, MLP, TIED
from common.core.oracle import initial_weights
from common.declarations import declaration
from common.errors import ParamFileError
from tests.conformance.fixtures import BOOK_MODEL_NAMES, book_input, loaded_model
from tests.helpers import assert_close


@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_export_then_import_into_a_fresh_model(backend, tmp_path, model_name):
    spec = BOOK_SPECS[model_name]
    source, weights = loaded_model(backend, spec, seed=3)
    path = tmp_path / "p.safetensors"
    portable.export_params(backend, source, str(path))
    target = backend.build_mlp(spec)
    metadata = portable.import_params(backend, target, str(path))
    assert metadata["framework"] == backend.name
    x = book_input(spec)
    assert_close("net(X) after import", backend.forward(target, x), backend.forward(source, x))
    for name, value in weights.items():
        assert_close(name, backend.get_param(target, name), value)


def test_a_numpy_written_file_loads_and_keeps_ties(backend, tmp_path):
    """A file from outside any framework (canonical layout) loads; the tie still holds after."""
    weights = initial_weights(TIED, seed=9)
    path = portable.write_portable(tmp_path / "n.safetensors", TIED, weights)
    model = backend.build_mlp(TIED)
    portable.import_params(backend, model, str(path))
    assert_close("layers.4.weight", backend.get_param(model, "layers.4.weight"), weights["layers.2.weight"])
    value = weights["layers.2.weight"].copy()
    value[0, 0] = 42.0
    backend.set_param(model, "layers.4.weight", value)
    assert float(backend.get_param(model, "layers.2.weight")[0, 0]) == 42.0


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def _rewrite(path, tensors=None, metadata=None):
    old_tensors, old_metadata = safetensors_io.read(path)
    safetensors_io.write(
        path, old_tensors if tensors is None else tensors, old_metadata if metadata is None else metadata
    )


def make_bad(kind: str, path) -> None:
    weights = initial_weights(TIED, seed=11)
    portable.write_portable(path, TIED, weights)
    tensors, metadata = safetensors_io.read(path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif kind == "not safetensors":
        path.write_text("weights: [1, 2, 3]\n")
    elif kind == "pickle payload":
        path.write_bytes(pickle.dumps(Evil()))
    elif kind == "missing key":
        del tensors["layers.6.bias"]
        _rewrite(path, tensors)
    elif kind == "extra key":
        tensors["layers.9.bias"] = np.zeros(3, np.float32)
        _rewrite(path, tensors)
    elif kind == "alias stored as a copy":
        tensors["layers.4.weight"] = tensors["layers.2.weight"]
        _rewrite(path, tensors)
    elif kind == "wrong shape":
        tensors["layers.2.weight"] = np.zeros((8, 4), np.float32)
        _rewrite(path, tensors)
    elif kind == "wrong dtype":
        tensors["layers.2.bias"] = tensors["layers.2.bias"].astype(np.float64)
        _rewrite(path, tensors)
    elif kind == "spec mismatch":
        _rewrite(path, metadata=dict(metadata, spec=json.dumps(MLP.to_dict())))
    elif kind == "tie contradiction":
        _rewrite(path, metadata=dict(metadata, ties="[]", aliases="{}"))
    elif kind == "not exported by paramparity":
        _rewrite(path, metadata={})
    elif kind == "nan":
        tensors["layers.0.weight"] = tensors["layers.0.weight"] * np.inf
        _rewrite(path, tensors)


BAD_FILES = {
    "truncated": "truncated",
    "not safetensors": "not a safetensors file",
    "pickle payload": "not a safetensors file",
    "missing key": r"missing parameter\(s\) \['layers.6.bias'\]",
    "extra key": "unexpected parameter.*layers.9.bias",
    "alias stored as a copy": "alias of layers.2.weight",
    "wrong shape": r"layers.2.weight: shape=\(8, 4\), but should be \(8, 8\)",
    "wrong dtype": "layers.2.bias: dtype=F64, but should be F32",
    "spec mismatch": "spec mismatch",
    "tie contradiction": "contradict the model's ties",
    "not exported by paramparity": "not written by paramparity",
    "nan": "layers.0.weight: holds NaN or Inf",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_refused_and_the_model_is_unchanged(backend, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    model, _ = loaded_model(backend, TIED)
    before = backend.snapshot(model)
    path = tmp_path / "bad.safetensors"
    make_bad(kind, path)
    with pytest.raises(ParamFileError, match=BAD_FILES[kind]) as info:
        portable.import_params(backend, model, str(path))
    assert "\n" not in str(info.value)
    after = backend.snapshot(model)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=f"{name} changed by a refused file")
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_nonfinite_file_loads_when_allowed(backend, tmp_path):
    model = backend.build_mlp(TIED)
    path = tmp_path / "inf.safetensors"
    make_bad("nan", path)
    portable.import_params(backend, model, str(path), allow_nonfinite=True)
    assert np.isinf(backend.get_param(model, "layers.0.weight")).all()


@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_native_format_maps_to_canonical_names(backend, tmp_path, model_name):
    """torch.save state_dict / save_parameters / .weights.h5 / flax msgpack, read back safely."""
    spec = BOOK_SPECS[model_name]
    model, weights = loaded_model(backend, spec, seed=4)
    backend.save_native_file(model, str(tmp_path / "native"))
    entries, values = backend.read_native_file(model, str(tmp_path / "native"))
    assert sorted(values) == sorted(spec.param_shapes), entries
    assert len(entries) >= len(spec.params)
    for name, value in values.items():
        assert_close(name, value, weights[name], f"from {entries}")
    fresh = backend.build_mlp(spec)
    backend.import_native_file(fresh, str(tmp_path / "native"))
    x = book_input(spec)
    assert_close("net(X) after import_native_file", backend.forward(fresh, x), backend.forward(model, x))


NATIVE_BAD = {
    "pickle payload": lambda original: pickle.dumps(Evil()),
    "garbage": lambda original: b"not a parameter file" * 8,
    "truncated": lambda original: original[: len(original) // 2],
}


@pytest.mark.parametrize("kind", sorted(NATIVE_BAD))
def test_bad_native_file_is_refused_and_the_model_is_unchanged(backend, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    model, _ = loaded_model(backend, TIED)
    backend.save_native_file(model, str(tmp_path / "native"))
    (written,) = tmp_path.glob("native*")
    written.write_bytes(NATIVE_BAD[kind](written.read_bytes()))
    before = backend.snapshot(model)
    with pytest.raises(ParamFileError, match="native") as info:
        backend.import_native_file(model, str(tmp_path / "native"))
    assert "\n" not in str(info.value)
    after = backend.snapshot(model)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=f"{name} changed by a refused file")
    assert not (tmp_path / "pwned-by-pickle").exists()


def _declared_hostile_files(backend_name: str) -> dict:
    reference = declaration(backend_name).hostile
    if not reference:
        return {}
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def test_declared_hostile_native_files_are_refused_in_one_line(backend, tmp_path):
    """Each hostile native file the backend declares (a stride-0 tensor, complex values, HDF5
    external storage...) is refused with one ParamFileError, quickly, and changes nothing."""
    files = _declared_hostile_files(backend.name)
    if not files:
        pytest.skip(f"{declaration(backend.name).path} declares no hostile native files")
    model, _ = loaded_model(backend, TIED)
    backend.save_native_file(model, str(tmp_path / "good"))
    backend.import_native_file(model, str(tmp_path / "good"))  # starts the isolated reader once
    before = backend.snapshot(model)
    for kind, write in files.items():
        path = str(tmp_path / "".join(c if c.isalnum() else "_" for c in kind))
        write(backend, model, path)
        started = time.monotonic()
        with pytest.raises(ParamFileError) as info:
            backend.import_native_file(model, path)
        assert time.monotonic() - started < 10, f"{kind}: took {time.monotonic() - started:.1f}s"
        assert "\n" not in str(info.value) and "\x1b" not in str(info.value), kind
    for name, value in backend.snapshot(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} changed by a refused file")
