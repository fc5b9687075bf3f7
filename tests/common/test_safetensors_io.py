"""The safetensors reader (the reference implementation, with paramparity's checks around it) refuses
every malformed file with a clear error and never runs code; the writer's files are the reference's."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import safetensors.numpy

from common.core import portable, safetensors_io
from common.core.models import MLP, TIED
from common.core.oracle import initial_weights
from common.errors import ParamFileError


def test_round_trip_keeps_order_values_and_metadata(tmp_path):
    tensors = {
        "b": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a": np.array([1.5], np.float64),
        "i": np.array([[1, 2]], np.int32),
    }
    safetensors_io.write(tmp_path / "f.safetensors", tensors, {"k": "v"})
    loaded, metadata = safetensors_io.read(tmp_path / "f.safetensors")
    assert list(loaded) == ["b", "a", "i"] and metadata == {"k": "v"}
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)


def test_interoperates_with_the_reference_layout(tmp_path):
    """Header: 8-byte LE length, JSON, 8-byte aligned; data offsets relative to the data start."""
    safetensors_io.write(tmp_path / "f", {"w": np.ones((2, 2), np.float32)}, {})
    raw = (tmp_path / "f").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    assert size % 8 == 0 and header["w"] == {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    assert len(raw) == 8 + size + 16


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def bad_files(tmp_path):
    good = tmp_path / "good.safetensors"
    safetensors_io.write(good, {"w": np.ones((2, 2), np.float32)}, {})
    raw = good.read_bytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 99]}}).encode()
    return {
        "empty": (b"", "only 0 bytes"),
        "truncated": (raw[:-3], "truncated"),
        "text": (b"hello, this is certainly not a tensor file", "not a safetensors file"),
        "pickle": (pickle.dumps(Evil()), "not a safetensors file"),
        "offsets outside": (struct.pack("<Q", len(header)) + header + b"\0" * 16, "or offset for tensor"),
        "header not an object": (struct.pack("<Q", 2) + b"[]", "not a valid safetensors file"),
        "unknown dtype": (
            _with_entry({"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}),
            "unknown variant `F99`",
        ),
        "bad shape": (_with_entry({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}), "integer `-1`"),
        "size mismatch": (_with_entry({"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}), "or offset"),
        "data truncated": (_with_entry({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}), "truncated"),
    }


def _with_entry(entry):
    header = json.dumps({"w": entry}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 4


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "truncated",
        "text",
        "pickle",
        "offsets outside",
        "header not an object",
        "unknown dtype",
        "bad shape",
        "size mismatch",
        "data truncated",
    ],
)
def test_malformed_files_are_refused(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    content, message = bad_files(tmp_path)[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ParamFileError, match=message) as info:
        safetensors_io.read(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_the_reference_reads_our_files_and_we_read_its(tmp_path):
    tensors = {"z": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, 2], np.int64)}
    safetensors_io.write(tmp_path / "ours", tensors, {"k": "v"})
    for name, value in safetensors.numpy.load_file(tmp_path / "ours").items():
        np.testing.assert_array_equal(value, tensors[name])
    safetensors.numpy.save_file(tensors, tmp_path / "theirs", metadata={"k": "v"})
    loaded, metadata = safetensors_io.read(tmp_path / "theirs")
    assert metadata == {"k": "v"} and sorted(loaded) == ["a", "z"]


def test_a_header_over_the_budget_is_refused_before_parsing(tmp_path):
    path = portable.write_portable(tmp_path / "t.safetensors", TIED, initial_weights(TIED))
    budget = safetensors_io.HeaderBudget(64, "spec 'tiny'")
    with pytest.raises(ParamFileError, match="far more than spec 'tiny' needs"):
        safetensors_io.read(path, budget=budget)


def test_names_and_shapes_come_from_the_header_alone(tmp_path):
    path = portable.write_portable(tmp_path / "t.safetensors", TIED, initial_weights(TIED))
    with safetensors_io.open_file(path) as file:
        assert file.names == [p.name for p in TIED.params]
        assert file.entry("layers.0.weight") == safetensors_io.Entry("layers.0.weight", "F32", (8, 4))


def test_missing_file(tmp_path):
    with pytest.raises(ParamFileError, match="cannot read"):
        safetensors_io.read(tmp_path / "nope.safetensors")


def test_portable_file_stores_tied_params_once_with_aliases(tmp_path):
    path = portable.write_portable(tmp_path / "t.safetensors", TIED, initial_weights(TIED))
    tensors, metadata = safetensors_io.read(path)
    assert list(tensors) == [p.name for p in TIED.params]
    assert json.loads(metadata["aliases"]) == {
        "layers.4.bias": "layers.2.bias",
        "layers.4.weight": "layers.2.weight",
    }
    assert json.loads(metadata["ties"]) == [["layers.2", "layers.4"]]


def test_read_params_checks_the_spec_without_a_framework(tmp_path):
    path = portable.write_portable(tmp_path / "m.safetensors", MLP, initial_weights(MLP))
    with pytest.raises(ParamFileError, match="spec mismatch"):
        portable.read_params(path, TIED)
    values, _ = portable.read_params(path, MLP)
    assert set(values) == set(MLP.param_shapes)
