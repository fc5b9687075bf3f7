"""Each framework's own view of the tied model, held to the book's claims.

A framework that disagrees with the book is a strict xfail in its declaration's [xfails], with
its reason (backends/<name>/backend.toml).
"""

from __future__ import annotations

import json

import pytest

from common.core.interface import NATIVE_FACT_KEYS
from common.core.models import BOOK_SPECS, TIED
from tests.conformance.fixtures import BOOK_MODEL_NAMES, loaded_model
from tests.helpers import assert_equal


@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_native_facts_are_complete_and_plain(backend, model_name):
    model, _ = loaded_model(backend, BOOK_SPECS[model_name])
    facts = backend.native_facts(model)
    assert_equal("native_facts keys", sorted(facts), sorted(NATIVE_FACT_KEYS), model_name)
    json.dumps(facts)  # plain values only


@pytest.mark.parametrize("model_name", BOOK_MODEL_NAMES)
def test_the_listing_holds_each_unique_parameter_once(backend, model_name):
    """The framework's own "all parameters" call (net.parameters(), params['params']...) lists
    each unique parameter once: a tie is one entry."""
    spec = BOOK_SPECS[model_name]
    model, _ = loaded_model(backend, spec)
    facts = backend.native_facts(model)
    assert_equal(
        "listing entries",
        len(facts["listing_names"]),
        len(backend.list_params(model)),
        f"{model_name}: {facts['listing_call']} lists each unique parameter once",
    )


def test_tie_is_the_framework_sharing_one_parameter_object(backend):
    model, _ = loaded_model(backend, TIED)
    identity = backend.native_facts(model)["tie_identity"]
    assert_equal(
        "same parameter object at layers.2 and layers.4", identity.get("same parameter object"), True
    )


def test_layer_list_holds_a_shared_layer_once(backend):
    """The book (Keras tab): "the duplicate layer is removed automatically". Only a framework that
    places one layer object at both positions can list it twice; one whose tie is two layer
    objects sharing parameters has no duplicate to remove."""
    model, _ = loaded_model(backend, TIED)
    facts = backend.native_facts(model)
    if not facts["tie_identity"]["same layer object"]:
        pytest.skip(f"the tie is two layer objects ({backend.tie_mechanism}): no layer is listed twice")
    assert_equal(
        facts["layer_list_call"] + " length",
        facts["layer_list_length"],
        facts["unique_layer_objects"],
        "a layer used twice should be listed once",
    )
