"""Portable parameters in this backend: export, import (ties kept), and bad or hostile files,
each refused with an error that names the problem, leaving the model exactly as it was."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from common.core import isolate, portable, safetensors_io
from common.core.hostile_native import FormatCannotHold, NativeChange, write_changed
from common.core.models import BOOK_SPECS, MLP, TIED
from common.core.oracle import initial_weights
from common.declarations import declaration
from common.errors import ParamFileError
from tests.conformance.fixtures import (
    BOOK_MODEL_NAMES,
    assert_refused_and_unchanged,
    book_input,
    declared,
    loaded_model,
)
from tests.helpers import assert_close, file_size_limit


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
    elif kind == "float64 1e300":
        tensors["layers.0.weight"] = np.full(tensors["layers.0.weight"].shape, 1e300)
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
    "float64 1e300": "layers.0.weight: dtype=F64, but should be F32",
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


def test_declared_hostile_native_files_are_refused_in_one_line(backend, tmp_path):
    """Each hostile native file the backend declares (a stride-0 tensor, complex values, HDF5
    external storage, other dtypes, a FIFO...) is refused with one bounded ParamFileError line
    that names the file, within the reader's time limit, and changes nothing."""
    files = declared(backend.name, "hostile")
    if not files:
        pytest.skip(f"{declaration(backend.name).path} declares no hostile native files")
    model, _ = loaded_model(backend, TIED)
    backend.save_native_file(model, str(tmp_path / "good"))
    backend.import_native_file(model, str(tmp_path / "good"))  # starts the isolated reader once
    for kind, write in files.items():
        path = str(tmp_path / "".join(c if c.isalnum() else "_" for c in kind[:64]))
        write(backend, model, path)
        assert_refused_and_unchanged(backend, model, path, within=isolate.DEFAULT_TIMEOUT_S)


# Every class make fuzz draws (common.core.hostile_native), once each, through the backend's
# declared native writer: the refusal each must get. A FIFO or a device is refused by the open,
# before the reader's time limit could pass ("timed out" would mean it waited).
NATIVE_CLASSES = {
    "int64": (NativeChange("retype", dtype="int64"), "dtype"),
    "uint64": (NativeChange("retype", dtype="uint64"), "dtype"),
    "int32": (NativeChange("retype", dtype="int32"), "dtype"),
    "float16": (NativeChange("retype", dtype="float16"), "dtype"),
    "float64": (NativeChange("retype", dtype="float64"), "dtype"),
    "float64 1e300": (NativeChange("overflow", index=3), "dtype"),
    "float32 inf": (NativeChange("nonfinite", index=1, value=float("inf")), "NaN or Inf"),
    "name of 1,000,000 characters": (NativeChange("long name", length=1_000_000), ""),
    "a parameter missing": (NativeChange("missing", index=-1), ""),
    "FIFO": (NativeChange("fifo"), "a FIFO .*not a regular file"),
    "/dev/zero": (NativeChange("device"), "a character device, not a regular file"),
}


@pytest.mark.parametrize("kind", list(NATIVE_CLASSES))
def test_native_file_classes_are_refused(backend, tmp_path, kind):
    writer = declared(backend.name, "native_writer")
    if writer is None:
        pytest.skip(f"{declaration(backend.name).path} declares no native_writer")
    change, match = NATIVE_CLASSES[kind]
    model, _ = loaded_model(backend, TIED)
    path = str(tmp_path / "hostile")
    try:
        write_changed(writer, backend, model, path, change)
    except FormatCannotHold as error:
        pytest.skip(f"{backend.name}: {error}")
    assert_refused_and_unchanged(backend, model, path, match, within=isolate.DEFAULT_TIMEOUT_S)


def test_values_beyond_float32_are_refused_through_the_api(backend):
    """float64 1e300 is finite, and inf once cast: load_params and set_param refuse it unless
    allow_nonfinite is given, and the model keeps its values."""
    model, weights = loaded_model(backend, TIED)
    huge = {name: np.asarray(value, np.float64) for name, value in weights.items()}
    huge["layers.2.weight"] = np.full(huge["layers.2.weight"].shape, 1e300)
    message = "layers.2.weight: holds NaN or Inf values once converted to float32"
    with pytest.raises(ParamFileError, match=message):
        backend.load_params(model, huge)
    with pytest.raises(ParamFileError, match=message):
        backend.set_param(model, "layers.4.weight", huge["layers.2.weight"])
    for name, value in weights.items():
        np.testing.assert_array_equal(backend.get_param(model, name), value, err_msg=f"{name} changed")
    backend.load_params(model, huge, allow_nonfinite=True)
    assert np.isinf(backend.get_param(model, "layers.4.weight")).all()


SAVES = {
    "native": lambda backend, model, folder: backend.save_native_file(model, str(folder / "params")),
    "portable": lambda backend, model, folder: portable.export_params(
        backend, model, folder / "params.safetensors"
    ),
}


@pytest.mark.parametrize("save", list(SAVES))
def test_a_failed_re_export_leaves_the_good_file_intact(backend, tmp_path, save):
    """A re-export over a good file whose write fails midway (a file size limit: EFBIG, as on a
    full disk) raises, and leaves the good file byte for byte, with no temporary file beside it."""
    model, _ = loaded_model(backend, TIED, seed=1)
    SAVES[save](backend, model, tmp_path)
    (written,) = tmp_path.iterdir()
    good = written.read_bytes()
    backend.load_params(model, initial_weights(TIED, seed=2))
    with file_size_limit(len(good) // 2), pytest.raises(Exception):  # noqa: B017 - any framework's error
        SAVES[save](backend, model, tmp_path)
    assert written.read_bytes() == good, f"{written.name} changed by a failed re-export"
    assert [path.name for path in Path(tmp_path).iterdir()] == [written.name], "a temporary file was left"
