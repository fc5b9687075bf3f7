from __future__ import annotations

import json

import pytest

from common.core.expectations import BOOK_PARAM_SHAPES, NEST_LEVELS, TIED_POSITIONS
from common.core.models import BOOK_SPECS, CUSTOM_TIED, TIED, load_spec
from common.core.spec import Dense, ModelSpec, ReLU, spec_from_dict
from common.errors import SpecError
from tests.common.spec_cases import INVALID_SPECS


@pytest.mark.parametrize("name", sorted(BOOK_SPECS))
def test_book_specs_derive_the_hand_written_shapes(name):
    assert BOOK_SPECS[name].param_shapes == BOOK_PARAM_SHAPES[name]


def test_tied_positions():
    assert {p.name: p.positions for p in TIED.params if len(p.positions) > 1} == TIED_POSITIONS
    assert TIED.owner_of("layers.4.weight") == "layers.2.weight"
    assert len(TIED.untied().params) - len(TIED.params) == 2


def test_nest_levels_are_real_blocks():
    names = {".".join(p.name.split(".")[:-1]) for p in BOOK_SPECS["nest"].params}
    for children in NEST_LEVELS.values():
        for child in children:
            assert any(name == child or name.startswith(child + ".") for name in names), child


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_invalid_specs(case):
    data, message = INVALID_SPECS[case]
    with pytest.raises(SpecError, match=message):
        spec_from_dict(data)


def test_ties_given_out_of_order_are_owned_by_the_first_position():
    spec = ModelSpec("t", 4, (Dense(8), ReLU(), Dense(8), ReLU(), Dense(8)), ties=((4, 2),))
    assert spec.owner_of("layers.4.bias") == "layers.2.bias"


@pytest.mark.parametrize("name", sorted(BOOK_SPECS))
def test_round_trip_through_dict(name, tmp_path):
    spec = BOOK_SPECS[name]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert load_spec(str(path)) == spec
    assert load_spec(name) is spec


def test_load_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="unknown model 'nope'"):
        load_spec("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="spec file .*bad.json: not JSON"):
        load_spec(str(bad))
    bad.write_text(json.dumps({"in_features": 4, "layers": [], "extra": 1}))
    with pytest.raises(SpecError, match="unknown spec field"):
        load_spec(str(bad))


def test_custom_flag_round_trips_and_is_written_only_when_set(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(CUSTOM_TIED.to_dict()))
    assert load_spec(str(path)) == CUSTOM_TIED
    assert [layer.get("custom") for layer in CUSTOM_TIED.to_dict()["layers"]] == [
        None,
        None,
        True,
        None,
        True,
        None,
        True,
    ]
    assert spec_from_dict({"in_features": 4, "layers": [{"kind": "dense", "units": 8}]}).layers == (Dense(8),)
    assert Dense(8).custom is False


def test_custom_flag_changes_no_canonical_name_or_shape():
    """The portable format and the oracle see a custom Dense as a Dense: same names, shapes, ties."""
    assert [(p.name, p.shape, p.positions) for p in CUSTOM_TIED.params] == [
        (p.name, p.shape, p.positions) for p in TIED.params
    ]


def test_a_custom_layer_needs_the_custom_layer_capability():
    assert "custom_layer" in CUSTOM_TIED.needs
    assert "custom_layer" not in TIED.needs
