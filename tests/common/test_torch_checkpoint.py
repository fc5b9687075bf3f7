"""Tied checkpoints in the convention of ``safetensors.torch.save_model``, framework-free: the
committed files the real save_model wrote, our writer against them, the reader's refusals
(contradicting ties, malformed and hostile files), and the portable file's one copy of a tied
table. The command's own behaviour is in test_checkpoint_commands.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

from common.core import portable, safetensors_io
from common.core.models import BATCHNORM, EMBED_TIED, NEST, TIED
from common.core.oracle import initial_weights
from common.core.torch_checkpoint import (
    PORTABLE,
    SAVE_MODEL,
    read_checkpoint,
    read_torch_checkpoint,
    write_torch_checkpoint,
)
from common.core.untrusted import load_json
from common.errors import MAX_MESSAGE, ParamFileError
from tests.common.torch_checkpoint_cases import (
    CONTRADICTIONS,
    MALFORMED,
    TIED_FILE,
    contents,
    make,
    write_raw_header,
)
from tests.data.make_torch_checkpoints import FIXTURES, STRING_ORDER, fixture_values

# What save_model stores for each spec, written out by hand: the tensors it keeps (in the
# reference writer's order, by name) and each dropped name -> the name kept in its place.
SAVED = {
    "tied": (
        ["0.bias", "0.weight", "2.bias", "2.weight", "6.bias", "6.weight"],
        {"4.weight": "2.weight", "4.bias": "2.bias"},
    ),
    "embed_tied": (["0.weight", "1.bias", "1.weight", "3.bias"], {"3.weight": "0.weight"}),
    "nest": (
        [
            "0.0.0.bias",
            "0.0.0.weight",
            "0.0.2.bias",
            "0.0.2.weight",
            "0.1.bias",
            "0.1.weight",
            "1.bias",
            "1.weight",
        ],
        {},
    ),
    # "10.weight" comes before "2.weight" in string order, so it is the one kept.
    "string_order": (
        [
            "0.bias",
            "0.weight",
            "10.bias",
            "10.weight",
            "4.bias",
            "4.weight",
            "6.bias",
            "6.weight",
            "8.bias",
            "8.weight",
        ],
        {"2.weight": "10.weight", "2.bias": "10.bias"},
    ),
}
SPECS = {spec.name: spec for spec in (TIED, EMBED_TIED, NEST, STRING_ORDER)}


def assert_refused(path, spec, match: str) -> str:
    """One ParamFileError line of at most MAX_MESSAGE characters, naming the file first."""
    __tracebackhide__ = True
    with pytest.raises(ParamFileError, match=match) as info:
        read_torch_checkpoint(path, spec)
    message = str(info.value)
    assert message.isprintable() and len(message) <= MAX_MESSAGE, f"message={message!r}"
    assert message.startswith(str(path)), f"message={message!r}, but should name {path} first"
    return message


def test_the_portable_file_stores_the_embedding_table_once(tmp_path):
    """The table is one tensor, under its owner's name; the projection's use is an alias."""
    weights = initial_weights(EMBED_TIED, seed=2)
    path = portable.write_portable(tmp_path / "p.safetensors", EMBED_TIED, weights)
    names, _, metadata = contents(path)
    assert sorted(names) == ["layers.0.weight", "layers.1.bias", "layers.1.weight", "layers.3.bias"]
    assert load_json(metadata["aliases"]) == {"layers.3.weight": "layers.0.weight"}
    values, _ = portable.read_params(path, EMBED_TIED)
    for name, value in weights.items():
        np.testing.assert_array_equal(values[name], value, err_msg=name)
    tensors, metadata = safetensors_io.read(path)
    safetensors_io.write(path, {**tensors, "layers.3.weight": tensors["layers.0.weight"]}, metadata)
    with pytest.raises(ParamFileError, match=r"layers.3.weight \(an alias of layers.0.weight"):
        portable.read_params(path, EMBED_TIED)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_committed_files_hold_what_save_model_records(name):
    spec, path = FIXTURES[name]
    names, _, metadata = contents(path)
    assert (names, metadata) == SAVED[name]
    checkpoint = read_checkpoint(path, spec)
    assert checkpoint.convention == SAVE_MODEL and checkpoint.metadata == SAVED[name][1]
    assert sorted(checkpoint.values) == sorted(spec.param_shapes)
    for param, value in fixture_values(spec).items():
        np.testing.assert_array_equal(checkpoint.values[param], value, err_msg=param)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_our_writer_writes_what_save_model_wrote(tmp_path, name):
    """Same values, same file: names, order, dtypes, shapes, bytes and metadata."""
    spec, committed = FIXTURES[name]
    ours = tmp_path / "ours.safetensors"
    write_torch_checkpoint(ours, spec, fixture_values(spec))
    assert contents(ours) == contents(committed)


@pytest.mark.parametrize("name", list(SPECS))
def test_the_writer_stores_each_tie_once_and_records_the_rest(tmp_path, name):
    spec = SPECS[name]
    weights = initial_weights(spec, seed=5)
    path = tmp_path / "w.safetensors"
    assert write_torch_checkpoint(path, spec, weights) == SAVED[name][1]
    names, _, metadata = contents(path)
    assert (names, metadata) == SAVED[name]
    values, _ = read_torch_checkpoint(path, spec)
    for param, value in weights.items():
        np.testing.assert_array_equal(values[param], value, err_msg=param)


@pytest.mark.parametrize("case", list(CONTRADICTIONS))
def test_a_file_whose_ties_contradict_the_spec_is_refused(tmp_path, case):
    change, match = CONTRADICTIONS[case]
    assert_refused(make(tmp_path / "bad.safetensors", change), TIED, match)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_file_is_refused(tmp_path, case):
    change, match = MALFORMED[case]
    assert_refused(make(tmp_path / "bad.safetensors", change), TIED, match)


def test_metadata_that_is_not_text_is_refused(tmp_path):
    header = {
        "__metadata__": {"4.weight": 3},
        "0.bias": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
    }
    path = write_raw_header(tmp_path / "bad.safetensors", header, bytes(32))
    assert_refused(path, TIED, "invalid type: integer `3`, expected a string")


def test_a_header_beyond_the_spec_budget_is_refused_before_it_is_parsed(tmp_path):
    path = make(tmp_path / "big.safetensors", lambda t, m: (t, {**m, "note": "x" * 2_000_000}))
    assert_refused(path, TIED, "far more than spec 'tied' needs .*refused before parsing it")


@pytest.mark.parametrize("kind", ["truncated", "not safetensors"])
def test_a_broken_file_is_refused(tmp_path, kind):
    path = tmp_path / "bad.safetensors"
    data = TIED_FILE.read_bytes()
    path.write_bytes(data[:-5] if kind == "truncated" else b"state_dict = {'0.weight': ...}\n")
    assert_refused(path, TIED, "truncated|not a safetensors file")


def test_nothing_but_the_given_regular_file_is_read(tmp_path):
    """A FIFO is refused at once (not waited on), as every reader's open is."""
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    assert_refused(fifo, TIED, "a FIFO .*not a regular file")


def test_equal_copies_and_the_saver_s_own_notes_are_accepted(tmp_path):
    """A tie stored twice with equal values (a state_dict saved whole) needs no record, and
    metadata that names no tensor ({"format": "pt"}, as Hugging Face writes) is left alone."""
    path = make(
        tmp_path / "copies.safetensors",
        lambda t, m: ({**t, "4.weight": t["2.weight"], "4.bias": t["2.bias"]}, {"format": "pt"}),
    )
    values, metadata = read_torch_checkpoint(path, TIED)
    assert metadata == {"format": "pt"}
    for param, value in fixture_values(TIED).items():
        np.testing.assert_array_equal(values[param], value, err_msg=param)


def test_a_kept_name_later_in_string_order_is_accepted(tmp_path):
    """load_model may prefer another name of the group; a record against any stored partner holds."""
    path = make(
        tmp_path / "kept4.safetensors",
        lambda t, m: (
            {
                **{k: v for k, v in t.items() if not k.startswith("2.")},
                "4.weight": t["2.weight"],
                "4.bias": t["2.bias"],
            },
            {"2.weight": "4.weight", "2.bias": "4.bias"},
        ),
    )
    values, _ = read_torch_checkpoint(path, TIED)
    np.testing.assert_array_equal(values["layers.2.weight"], fixture_values(TIED)["layers.2.weight"])


def test_a_spec_with_state_is_refused_both_ways(tmp_path):
    match = "spec 'batchnorm' has BatchNorm state, which the save_model convention does not carry here"
    with pytest.raises(ParamFileError, match=match):
        write_torch_checkpoint(tmp_path / "bn.safetensors", BATCHNORM, initial_weights(BATCHNORM))
    assert not (tmp_path / "bn.safetensors").exists()
    with pytest.raises(ParamFileError, match=match):
        read_torch_checkpoint(TIED_FILE, BATCHNORM)


def test_the_conventions_are_told_apart_by_the_metadata(tmp_path):
    weights = initial_weights(TIED, seed=6)
    path = portable.write_portable(tmp_path / "p.safetensors", TIED, weights)
    checkpoint = read_checkpoint(path, TIED)
    assert checkpoint.convention == PORTABLE
    np.testing.assert_array_equal(checkpoint.values["layers.2.weight"], weights["layers.2.weight"])
    assert_refused(path, TIED, "a paramparity portable file")


def test_a_file_for_another_spec_is_refused():
    assert_refused(FIXTURES["embed_tied"][1], TIED, r"0.weight: shape=\(16, 8\), but should be \(8, 4\)")


def test_the_writer_refuses_bad_values_and_writes_nothing(tmp_path):
    weights = initial_weights(TIED)
    weights["layers.2.weight"] = np.full((8, 8), np.inf, np.float32)
    with pytest.raises(ParamFileError, match="layers.2.weight: holds NaN or Inf"):
        write_torch_checkpoint(tmp_path / "w.safetensors", TIED, weights)
    assert list(tmp_path.iterdir()) == []
