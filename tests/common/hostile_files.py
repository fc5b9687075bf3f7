"""Hostile inputs, one generator per class the fuzzing of issue 10 found; nothing binary is
committed. Each generator writes its file into a folder and returns the path to hand to the reader
(some return a path that is not a regular file, or cannot exist).

HOSTILE_FILES: parameter files every reader must refuse with one escaped ParamFileError line
(checked against the tied book model). HOSTILE_SPECS: spec files ``paramparity spec`` must refuse.
HOSTILE_RECORDS: files ``paramparity diff --from`` must refuse. Issue 24's classes: unclosed
strings of escaped quotes (a backtracking check took quadratic time on them), float64 beyond
float32's range, oversized names (every error stays one line of at most 500 characters).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.core import safetensors_io
from common.core.models import MLP, TIED
from common.core.oracle import initial_weights
from common.core.portable import write_portable

Generator = Callable[[Path], Path]
HOSTILE_FILES: dict[str, Generator] = {}
HOSTILE_SPECS: dict[str, Generator] = {}
HOSTILE_RECORDS: dict[str, Generator] = {}
DEEP = 1000
MB = 1024 * 1024
UNCLOSED = '"' + '\\"' * (MB // 2)  # 1 MB: a string of escaped quotes that never closes
HUGE_NAME = "n" * (10 * MB)
BIG_INT = "9" * 5000  # over Python's 4,300-digit int limit
EVIL_TEXT = "evil\nname\x1b[31m\x1b[2J\ud800"  # newline, ANSI escapes, a lone surrogate


def hostile(registry: dict[str, Generator], name: str) -> Callable[[Generator], Generator]:
    def register(generator: Generator) -> Generator:
        registry[name] = generator
        return generator

    return register


# -- building blocks ------------------------------------------------------------------------------------
def valid_parts() -> tuple[dict, bytes]:
    """The header (as a dict, metadata included) and data of a valid file of the tied model."""
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as folder:
        raw = write_portable(Path(folder) / "t.safetensors", TIED, initial_weights(TIED)).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def frame(header: str | bytes | dict, data: bytes) -> bytes:
    """Length prefix, header (JSON text kept exactly as given), data."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    text = header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header
    return struct.pack("<Q", len(text)) + text + data


def write(folder: Path, raw: bytes, name: str = "hostile.safetensors") -> Path:
    path = folder / name
    path.write_bytes(raw)
    return path


def with_text(folder: Path, edit: Callable[[str], str]) -> Path:
    """The valid file with its header's JSON text edited (the length prefix follows)."""
    header, data = valid_parts()
    return write(folder, frame(edit(json.dumps(header, separators=(",", ":"))), data))


def with_header(folder: Path, edit: Callable[[dict], None]) -> Path:
    header, data = valid_parts()
    edit(header)
    return write(folder, frame(header, data))


def with_metadata(folder: Path, key: str, value: str) -> Path:
    return with_header(folder, lambda header: header["__metadata__"].__setitem__(key, value))


def first_entry(header: dict) -> dict:
    return header["layers.0.weight"]


# -- shapes and dtypes ---------------------------------------------------------------------------------------
@hostile(HOSTILE_FILES, "shape dim 2**63")
def _(folder: Path) -> Path:
    return with_header(folder, lambda h: first_entry(h).__setitem__("shape", [2**63]))


@hostile(HOSTILE_FILES, "shape product wraps int64")
def _(folder: Path) -> Path:
    return with_header(folder, lambda h: first_entry(h).__setitem__("shape", [2**32, 2**32]))


@hostile(HOSTILE_FILES, "65 dims")
def _(folder: Path) -> Path:
    # 1 x ... x 1 x 8 x 4 holds exactly the bytes of the (8, 4) weight: the header itself is valid
    return with_header(folder, lambda h: first_entry(h).__setitem__("shape", [1] * 63 + [8, 4]))


@hostile(HOSTILE_FILES, "dtype as a list")
def _(folder: Path) -> Path:
    return with_header(folder, lambda h: first_entry(h).__setitem__("dtype", ["F32"]))


@hostile(HOSTILE_FILES, "boolean data_offsets")
def _(folder: Path) -> Path:
    return with_header(folder, lambda h: first_entry(h).__setitem__("data_offsets", [False, True]))


# -- the header's JSON ---------------------------------------------------------------------------------
@hostile(HOSTILE_FILES, "header nested 1000 deep")
def _(folder: Path) -> Path:
    return with_text(folder, lambda text: '{"x":' + "[" * DEEP + "]" * DEEP + "," + text[1:])


@hostile(HOSTILE_FILES, "header int of 5000 digits")
def _(folder: Path) -> Path:
    return with_text(folder, lambda text: text.replace('"shape":[8,4]', f'"shape":[{BIG_INT}]', 1))


@hostile(HOSTILE_FILES, "duplicate __metadata__")
def _(folder: Path) -> Path:
    return with_text(folder, lambda text: '{"__metadata__":{"format":"paramparity/1"},' + text[1:])


for _value in ("false", '""', "0", "[]"):

    @hostile(HOSTILE_FILES, f"__metadata__ set to {_value}")
    def _(folder: Path, value: str = _value) -> Path:
        header, data = valid_parts()
        del header["__metadata__"]
        text = json.dumps(header, separators=(",", ":"))
        return write(folder, frame('{"__metadata__":' + value + "," + text[1:], data))


@hostile(HOSTILE_FILES, "tensor name with a lone surrogate")
def _(folder: Path) -> Path:
    return with_text(folder, lambda text: text.replace('"layers.0.bias"', '"layers.0.bias\\ud800"'))


def _sparse_header(folder: Path, length: int) -> Path:
    """A header length in (100,000,000, 100 MiB], and a (sparse) file long enough to hold it."""
    path = write(folder, struct.pack("<Q", length) + b"{")
    os.truncate(path, 8 + length + 16)
    return path


@hostile(HOSTILE_FILES, "header of 100,000,001 bytes")
def _(folder: Path) -> Path:
    return _sparse_header(folder, 100_000_001)


@hostile(HOSTILE_FILES, "header of 100 MiB")
def _(folder: Path) -> Path:
    return _sparse_header(folder, 100 * 1024 * 1024)


def many_tensors(folder: Path, count: int) -> Path:
    """A valid file of ``count`` one-element tensors: a header of about 70 bytes per tensor."""
    entries = ",".join(
        f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}' for i in range(count)
    )
    return write(folder, frame("{" + entries + "}", bytes(4 * count)))


@hostile(HOSTILE_FILES, "1,000,000 tensors")
def _(folder: Path) -> Path:
    return many_tensors(folder, 1_000_000)


# -- metadata: spec, ties, aliases ---------------------------------------------------------------------------
for _key in ("spec", "ties", "aliases"):

    @hostile(HOSTILE_FILES, f"metadata {_key} nested 1000 deep")
    def _(folder: Path, key: str = _key) -> Path:
        return with_metadata(folder, key, "[" * DEEP + "]" * DEEP)

    @hostile(HOSTILE_FILES, f"metadata {_key} int of 5000 digits")
    def _(folder: Path, key: str = _key) -> Path:
        return with_metadata(folder, key, f"[{BIG_INT}]")


for _key in ("spec", "ties"):

    @hostile(HOSTILE_FILES, f"metadata {_key}: a 1 MB string of escaped quotes, unclosed")
    def _(folder: Path, key: str = _key) -> Path:
        return with_metadata(folder, key, UNCLOSED)


@hostile(HOSTILE_FILES, "F64 tensor of 1e300 (inf as float32)")
def _(folder: Path) -> Path:
    path = write_portable(folder / "huge.safetensors", TIED, initial_weights(TIED))
    tensors, metadata = safetensors_io.read(path)
    tensors["layers.0.weight"] = np.full(tensors["layers.0.weight"].shape, 1e300)
    safetensors_io.write(path, tensors, metadata)
    return path


@hostile(HOSTILE_FILES, "extra tensor named with 1,000,000 characters")
def _(folder: Path) -> Path:
    header, data = valid_parts()
    entry = dict(first_entry(header), data_offsets=[len(data), len(data) + 128])
    header["n" * 1_000_000] = entry
    return write(folder, frame(header, data + data[:128]))


@hostile(HOSTILE_FILES, "metadata spec with huge units")
def _(folder: Path) -> Path:
    spec = TIED.to_dict()
    spec["layers"][0]["units"] = 10**19
    return with_metadata(folder, "spec", json.dumps(spec))


# -- names and values printed ---------------------------------------------------------------
@hostile(HOSTILE_FILES, "tensor name with newline and ANSI escapes")
def _(folder: Path) -> Path:
    # an extra entry, with bytes of its own (sharing layers.0.weight's would be refused earlier)
    header, data = valid_parts()
    entry = dict(first_entry(header))
    entry["data_offsets"] = [len(data), len(data) + 128]
    header["evil\nname\x1b[31m\x1b[2J"] = entry
    return write(folder, frame(header, data + data[:128]))


@hostile(HOSTILE_FILES, "metadata format with ANSI escapes")
def _(folder: Path) -> Path:
    return with_metadata(folder, "format", "\x1b[2J\x1b[31mparamparity/1\nok")


@hostile(HOSTILE_FILES, "spec mismatch, named with escapes")
def _(folder: Path) -> Path:
    spec = MLP.to_dict()
    spec["name"] = EVIL_TEXT
    return with_metadata(folder, "spec", json.dumps(spec))


# -- paths -------------------------------------------------------------------------------------------------
@hostile(HOSTILE_FILES, "FIFO")
def _(folder: Path) -> Path:
    path = folder / "pipe.safetensors"
    os.mkfifo(path)
    return path


@hostile(HOSTILE_FILES, "/dev/zero")
def _(folder: Path) -> Path:
    return Path("/dev/zero")


@hostile(HOSTILE_FILES, "300-character file name")
def _(folder: Path) -> Path:
    return folder / ("a" * 300 + ".safetensors")


@hostile(HOSTILE_FILES, "directory")
def _(folder: Path) -> Path:
    path = folder / "dir.safetensors"
    path.mkdir()
    return path


@hostile(HOSTILE_FILES, "file name with newline and ANSI escapes")
def _(folder: Path) -> Path:
    return write(folder, b"not safetensors", "evil\n\x1b[31m.safetensors")


# == spec files ==============================================================================================
def _spec_file(folder: Path, text: str | bytes) -> Path:
    path = folder / "spec.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    return path


@hostile(HOSTILE_SPECS, "nested 1000 deep")
def _(folder: Path) -> Path:
    return _spec_file(folder, '{"in_features": 4, "layers": ' + "[" * DEEP + "]" * DEEP + "}")


@hostile(HOSTILE_SPECS, "blocks nested 200 deep")
def _(folder: Path) -> Path:
    layer = {"kind": "dense", "units": 2}
    for _ in range(200):
        layer = {"kind": "block", "layers": [layer]}
    return _spec_file(folder, json.dumps({"in_features": 4, "layers": [layer]}))


@hostile(HOSTILE_SPECS, "int of 5000 digits")
def _(folder: Path) -> Path:
    return _spec_file(folder, '{"in_features": ' + BIG_INT + ', "layers": [{"kind": "dense", "units": 1}]}')


@hostile(HOSTILE_SPECS, "units as a list")
def _(folder: Path) -> Path:
    return _spec_file(folder, '{"in_features": 4, "layers": [{"kind": "dense", "units": [8]}]}')


@hostile(HOSTILE_SPECS, "duplicate key")
def _(folder: Path) -> Path:
    return _spec_file(
        folder, '{"in_features": 4, "in_features": 5, "layers": [{"kind": "dense", "units": 1}]}'
    )


@hostile(HOSTILE_SPECS, "NaN")
def _(folder: Path) -> Path:
    return _spec_file(folder, '{"in_features": NaN, "layers": [{"kind": "dense", "units": 1}]}')


@hostile(HOSTILE_SPECS, "not UTF-8")
def _(folder: Path) -> Path:
    return _spec_file(folder, b'{"name": "\xff\xfe", "in_features": 4}')


@hostile(HOSTILE_SPECS, "layer kind with escapes")
def _(folder: Path) -> Path:
    return _spec_file(folder, json.dumps({"in_features": 4, "layers": [{"kind": EVIL_TEXT}]}))


@hostile(HOSTILE_SPECS, "a 1 MB string of escaped quotes, unclosed")
def _(folder: Path) -> Path:
    return _spec_file(folder, '{"name": ' + UNCLOSED)


@hostile(HOSTILE_SPECS, "name of 10 MB, and no layers")
def _(folder: Path) -> Path:
    return _spec_file(folder, json.dumps({"name": HUGE_NAME, "in_features": 4, "layers": []}))


@hostile(HOSTILE_SPECS, "layer kind of 10 MB")
def _(folder: Path) -> Path:
    return _spec_file(folder, json.dumps({"in_features": 4, "layers": [{"kind": HUGE_NAME}]}))


@hostile(HOSTILE_SPECS, "tie position of 10 MB")
def _(folder: Path) -> Path:
    layers = [{"kind": "dense", "units": 2}] * 2
    return _spec_file(folder, json.dumps({"in_features": 4, "layers": layers, "ties": [[0, HUGE_NAME]]}))


@hostile(HOSTILE_SPECS, "19,999 layers, a tie to a missing position")
def _(folder: Path) -> Path:
    layers = [{"kind": "dense", "units": 2}] * 19_999
    return _spec_file(folder, json.dumps({"in_features": 2, "layers": layers, "ties": [[0, 99_999]]}))


@hostile(HOSTILE_SPECS, "FIFO")
def _(folder: Path) -> Path:
    path = folder / "spec.json"
    os.mkfifo(path)
    return path


@hostile(HOSTILE_SPECS, "/dev/zero")
def _(folder: Path) -> Path:
    return Path("/dev/zero")


@hostile(HOSTILE_SPECS, "300-character file name")
def _(folder: Path) -> Path:
    return folder / ("a" * 300 + ".json")


@hostile(HOSTILE_SPECS, "directory")
def _(folder: Path) -> Path:
    path = folder / "spec.d"
    path.mkdir()
    return path


# == diff --from records =================================================================================
def _record_file(folder: Path, text: str) -> Path:
    path = folder / "diff.json"
    path.write_text(text)
    return path


@hostile(HOSTILE_RECORDS, "a 1 MB string of escaped quotes, unclosed")
def _(folder: Path) -> Path:
    return _record_file(folder, '{"records": ' + UNCLOSED)


@hostile(HOSTILE_RECORDS, "nested 100,000 deep")
def _(folder: Path) -> Path:
    return _record_file(folder, '{"records": ' + "[" * 100_000 + "]" * 100_000 + "}")


@hostile(HOSTILE_RECORDS, "record of a backend named with 10 MB")
def _(folder: Path) -> Path:
    return _record_file(folder, json.dumps({"records": {HUGE_NAME: 1}}))


@hostile(HOSTILE_RECORDS, "FIFO")
def _(folder: Path) -> Path:
    path = folder / "diff.json"
    os.mkfifo(path)
    return path


@hostile(HOSTILE_RECORDS, "/dev/zero")
def _(folder: Path) -> Path:
    return Path("/dev/zero")


def spec_named_with_escapes(folder: Path) -> Path:
    """A valid spec whose name and block label hold a newline, ANSI escapes and a lone surrogate."""
    data = TIED.to_dict()
    data["name"] = EVIL_TEXT
    return _spec_file(folder, json.dumps(data))


def file_with_escapes_everywhere(folder: Path) -> Path:
    """A file the reference accepts whose names and metadata hold newlines and ANSI escapes."""
    header, data = valid_parts()
    header["__metadata__"]["\x1b[31mkey\n"] = "value\n\x1b[2J"
    header["__metadata__"]["framework"] = "evil\nname\x1b[31m\x1b[2J"  # (the reference refuses \ud800)
    entry = header.pop("layers.6.bias")
    header["layers.6.bias\n\x1b[31m"] = entry
    return write(folder, frame(header, data))


__all__ = [
    "HOSTILE_FILES",
    "HOSTILE_RECORDS",
    "HOSTILE_SPECS",
    "file_with_escapes_everywhere",
    "many_tensors",
    "spec_named_with_escapes",
]
