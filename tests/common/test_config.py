from __future__ import annotations

import pytest

from common.config import BACKENDS, ENV_VAR, canonical_backend, parse_backend_list, selected_backend
from common.errors import UsageError


@pytest.mark.parametrize(
    "name, expected",
    [
        ("torch", "torch"),
        ("pytorch", "torch"),
        ("mxnet", "mxnet"),
        ("gluon", "mxnet"),
        ("jax", "jax"),
        ("flax", "jax"),
        ("tensorflow", "tensorflow"),
        ("tf", "tensorflow"),
        (" TF ", "tensorflow"),
    ],
)
def test_synonyms(name, expected):
    assert selected_backend({ENV_VAR: name}) == expected


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UsageError) as info:
        selected_backend({ENV_VAR: "caffe"})
    message = str(info.value)
    assert "'caffe'" in message and all(
        name in message for name in BACKENDS + ("pytorch", "gluon", "flax", "tf")
    )
    assert "\n" not in message


def test_unset_says_what_to_set():
    with pytest.raises(UsageError, match=f"{ENV_VAR} is not set"):
        selected_backend({})


def test_backend_lists():
    assert parse_backend_list("all") == BACKENDS
    assert parse_backend_list("tf,torch,pytorch") == ("torch", "tensorflow")
    with pytest.raises(UsageError, match="unknown backend 'theano'"):
        parse_backend_list("torch,theano")
    with pytest.raises(UsageError):
        canonical_backend("")
