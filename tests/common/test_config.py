from __future__ import annotations

import os

import pytest

from common.config import (
    DEVICE_VAR,
    ENV_VAR,
    backend_names,
    canonical_backend,
    parse_backend_list,
    selected_backend,
    selected_device,
)
from common.declarations import ROOT, DeclarationError, declarations, parse_declaration
from common.errors import UsageError

ALIASES = [(alias, d.name) for d in declarations() for alias in (d.name, *d.synonyms)]


@pytest.mark.parametrize("name, expected", ALIASES, ids=[alias for alias, _ in ALIASES])
def test_every_declared_name_and_synonym_selects_its_backend(name, expected):
    assert selected_backend({ENV_VAR: name}) == expected
    assert selected_backend({ENV_VAR: f"  {name.upper()} "}) == expected


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UsageError) as info:
        selected_backend({ENV_VAR: "caffe"})
    message = str(info.value)
    assert "'caffe'" in message and all(alias in message for alias, _ in ALIASES)
    assert "\n" not in message


def test_unset_says_what_to_set():
    with pytest.raises(UsageError, match=f"{ENV_VAR} is not set"):
        selected_backend({})


def test_backend_lists():
    names = backend_names()
    assert parse_backend_list("all") == names
    assert parse_backend_list(f"{names[-1]},{names[0]},{names[0]}") == (names[0], names[-1])
    with pytest.raises(UsageError, match="unknown backend 'theano'"):
        parse_backend_list(f"{names[0]},theano")
    with pytest.raises(UsageError):
        canonical_backend("")


GOOD = """
name = "demo"
order = 1
framework = "Demo"
book_tab = "PyTorch"
adapter = "backends.demo.adapter:Demo"
env = "demo"
import_roots = ["demo"]
"""


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD.replace('name = "demo"', ""), "missing required key 'name'"),
        (GOOD + "colour = 1\n", "unknown key 'colour'"),
        (GOOD.replace("order = 1", 'order = "1"'), "order='1', but should be a int"),
        (GOOD.replace(":Demo", ""), "should be 'module:Class'"),
        (
            GOOD + "[capabilities]\nlazy_input_size = { value = true }\n",
            "needs a boolean 'value' and a 'reason'",
        ),
        ("name = ", "cannot read it"),
    ],
)
def test_a_bad_declaration_names_its_file_and_problem(tmp_path, text, message):
    path = tmp_path / "backend.toml"
    path.write_text(text)
    with pytest.raises(DeclarationError, match="backend.toml") as info:
        parse_declaration(path)
    assert message in str(info.value)


def test_two_backends_cannot_claim_one_name(tmp_path):
    for folder, synonyms in (("a", "[]"), ("b", '["demo"]')):
        (tmp_path / folder).mkdir()
        text = GOOD.replace('"demo"', f'"{folder}"', 1) + f"synonyms = {synonyms}\n"
        (tmp_path / folder / "backend.toml").write_text(text.replace('name = "a"', 'name = "demo"'))
    with pytest.raises(DeclarationError, match="already taken"):
        declarations.__wrapped__(tmp_path)


@pytest.mark.parametrize("table", ["suite_env_vars", "run_env_vars"])
def test_default_env_vars_are_set_only_where_the_user_set_none(tmp_path, monkeypatch, table):
    from common.registry import apply_defaults

    path = tmp_path / "backend.toml"
    path.write_text(GOOD + f'[{table}]\nPARITY_DEMO_A = "ours"\nPARITY_DEMO_B = "ours"\n')
    entry = parse_declaration(path)
    monkeypatch.delenv("PARITY_DEMO_A", raising=False)
    monkeypatch.setenv("PARITY_DEMO_B", "user")
    apply_defaults(getattr(entry, table))
    assert (os.environ["PARITY_DEMO_A"], os.environ["PARITY_DEMO_B"]) == ("ours", "user")
    monkeypatch.delenv("PARITY_DEMO_A")


def test_run_env_vars_name_places_in_the_project(tmp_path):
    path = tmp_path / "backend.toml"
    path.write_text(GOOD + '[run_env_vars]\nPARITY_DEMO_CACHE = "{root}/.venvs/.demo-cache"\n')
    assert parse_declaration(path).run_env_vars == {"PARITY_DEMO_CACHE": f"{ROOT}/.venvs/.demo-cache"}


def test_declarations_come_in_report_order():
    orders = [d.order for d in declarations()]
    assert orders == sorted(orders) and len(set(backend_names())) == len(orders)


@pytest.mark.parametrize("value, expected", [("", "cpu"), ("cpu", "cpu"), (" CUDA ", "cuda")])
def test_device_names(value, expected):
    assert selected_device({DEVICE_VAR: value}) == expected


def test_an_unknown_device_lists_the_valid_ones():
    with pytest.raises(UsageError, match="PARITY_DEVICE='gpu' is not a device; valid: cpu, cuda"):
        selected_device({DEVICE_VAR: "gpu"})
