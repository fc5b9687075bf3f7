"""save_model files that must be refused, each made from the committed file of the tied model
(tests/data/save_model_tied.safetensors: 2.weight and 2.bias stored, 4.weight and 4.bias recorded
as dropped), and the message each must produce; shared by both suites."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.core import safetensors_io
from tests.data.make_torch_checkpoints import FIXTURES

TIED_FILE = FIXTURES["tied"][1]
Change = Callable[[dict[str, np.ndarray], dict[str, str]], tuple[dict[str, np.ndarray], dict[str, str]]]


def _without(mapping: dict, *names: str) -> dict:
    return {key: value for key, value in mapping.items() if key not in names}


# Files whose ties disagree with the spec's: 4 is tied to 2 there, nothing else is tied.
CONTRADICTIONS: dict[str, tuple[Change, str]] = {
    "kept name is not its partner": (
        lambda t, m: (t, {**m, "4.weight": "0.weight"}),
        "'4.weight' as saved under '0.weight', a tie that contradicts spec 'tied': "
        "there 4.weight is tied to 2.weight",
    ),
    "a tie the spec does not have": (
        lambda t, m: (_without(t, "6.bias"), {**m, "6.bias": "0.bias"}),
        "a tie that contradicts spec 'tied': there 6.bias is tied to nothing",
    ),
    "a dropped name the spec lacks": (
        lambda t, m: (t, {**m, "8.weight": "2.weight"}),
        "spec 'tied' has no parameter '8.weight'",
    ),
    "the kept name is not stored": (
        lambda t, m: (_without(t, "2.weight"), m),
        "'4.weight' as saved under '2.weight', but the file stores no 2.weight",
    ),
    "a dropped name stored too": (
        lambda t, m: ({**t, "4.weight": t["2.weight"]}, m),
        "but the file stores '4.weight' too",
    ),
    "a spec tie the metadata does not record": (
        lambda t, m: (t, _without(m, "4.weight")),
        "ties 2.weight, 4.weight, but the file stores only 2.weight "
        "and its metadata records no tie for 4.weight",
    ),
    "two stored copies that differ": (
        lambda t, m: ({**t, "4.weight": t["2.weight"] + 1}, _without(m, "4.weight")),
        "4.weight and 2.weight are two stored copies of layers.2.weight, which the spec ties, "
        "but their values differ",
    ),
}

MALFORMED: dict[str, tuple[Change, str]] = {
    "a key that is no state_dict key": (
        lambda t, m: ({**t, "7.weight": np.zeros((1, 8), np.float32)}, m),
        "unexpected tensor '7.weight': not a state_dict key of spec 'tied'",
    ),
    "canonical names instead of torch keys": (
        lambda t, m: ({f"layers.{k}": v for k, v in t.items()}, m),
        "unexpected tensor 'layers.0.bias'",
    ),
    "a missing parameter": (
        lambda t, m: (_without(t, "6.bias"), m),
        "missing parameter layers.6.bias: no tensor 6.bias",
    ),
    "a wrong shape": (
        lambda t, m: ({**t, "2.weight": np.zeros((8, 4), np.float32)}, m),
        r"2.weight: shape=\(8, 4\), but should be \(8, 8\)",
    ),
    "float64": (
        lambda t, m: ({**t, "0.bias": t["0.bias"].astype(np.float64)}, m),
        "0.bias: dtype=F64, but should be F32",
    ),
    "float16": (
        lambda t, m: ({**t, "0.bias": t["0.bias"].astype(np.float16)}, m),
        "0.bias: dtype=F16, but should be F32",
    ),
    "int64": (
        lambda t, m: ({**t, "0.bias": np.zeros(8, np.int64)}, m),
        "0.bias: dtype=I64, but should be F32",
    ),
    "NaN": (
        lambda t, m: ({**t, "6.bias": np.full(1, np.nan, np.float32)}, m),
        "layers.6.bias: holds NaN or Inf values",
    ),
}


def make(path: Path, change: Change, source: Path = TIED_FILE) -> Path:
    """``source`` with ``change`` applied to its tensors and metadata, written to ``path``."""
    tensors, metadata = safetensors_io.read(source)
    tensors, metadata = change(tensors, metadata)
    safetensors_io.write(path, tensors, metadata)
    return path


def write_raw_header(path: Path, header: dict, data: bytes) -> Path:
    """A file with exactly this JSON header (e.g. metadata that is not text), padded as the format pads."""
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def contents(path: Path) -> tuple[list[str], dict[str, tuple[str, tuple[int, ...], bytes]], dict[str, str]]:
    """What a safetensors file holds, order included: its tensor names in data order, each
    tensor's dtype, shape and bytes, and its metadata. Two files with equal contents differ at
    most in the order the header lists its metadata (save_model's is a hash map's order)."""
    with safetensors_io.open_file(path) as file:
        tensors = {}
        for name in file.names:
            entry = file.entry(name)
            tensors[name] = (entry.dtype, entry.shape, file.load(name).tobytes())
        return list(file.names), tensors, dict(file.metadata)
