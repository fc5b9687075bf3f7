from __future__ import annotations

import os
import tomllib
from pathlib import Path

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
from common.declarations import (
    BATCHNORM_FACTS,
    CAPABILITIES,
    FACTS,
    ROOT,
    SCHEMA,
    DeclarationError,
    declarations,
    parse_declaration,
)
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
bench = "backends.demo.bench:make_handwritten"

[capabilities]
lazy_input_size = { value = true, reason = "demo" }
device_placement = { value = false, reason = "demo" }
batchnorm = { value = false, reason = "demo" }
freezing = { value = false, reason = "demo" }
embedding = { value = false, reason = "demo" }

[facts]
weight_layout = "(out, in)"
grad_state_before_backward = "none"
"""


def _without(text: str, key: str) -> str:
    """GOOD with one key removed: a top-level key, a whole table, or a key inside a table."""
    kept = [line for line in text.splitlines() if not line.startswith((f"{key} =", f"[{key}]"))]
    return "\n".join(kept) + "\n"


def _top(text: str, line: str) -> str:
    """``line`` as a top-level key: before the first table."""
    return text.replace("[capabilities]", f"{line}\n\n[capabilities]", 1)


def _with_table(text: str, table: str, line: str) -> str:
    return text.replace(f"[{table}]\n", f"[{table}]\n{line}\n")


REQUIRED_KEYS = [key for key, spec in SCHEMA.items() if spec.required]


def test_good_holds_every_required_key():
    """So the test below removes each one for real."""
    data = tomllib.loads(GOOD)
    assert set(REQUIRED_KEYS) <= set(data)
    assert (set(data["capabilities"]), set(data["facts"])) == (set(CAPABILITIES), set(FACTS))
    assert parse_declaration_text(GOOD).name == "demo"


def parse_declaration_text(text: str, tmp: Path | None = None):
    import tempfile

    folder = Path(tmp or tempfile.mkdtemp()) / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "backend.toml"
    path.write_text(text)
    return parse_declaration(path)


@pytest.mark.parametrize(
    "key", [*REQUIRED_KEYS, *(f"capabilities.{k}" for k in CAPABILITIES), *(f"facts.{k}" for k in FACTS)]
)
def test_removing_any_required_key_is_one_clear_error_at_load(tmp_path, key):
    table, _, inner = key.rpartition(".") if "." in key else ("", "", key)
    text = _without(GOOD, inner)
    if table:  # the table stays, the key inside it goes
        text = GOOD.replace(
            next(line for line in GOOD.splitlines() if line.startswith(f"{inner} =")) + "\n", ""
        )
    with pytest.raises(DeclarationError) as info:
        parse_declaration_text(text, tmp_path)
    message = str(info.value)
    assert "backend.toml" in message and repr(inner) in message and "\n" not in message, message


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD.replace('name = "demo"', ""), "missing required key 'name'"),
        (_top(GOOD, "colour = 1"), "unknown key 'colour'"),
        (GOOD.replace("order = 1", 'order = "1"'), "order='1', but should be a int"),
        (GOOD.replace(":Demo", ""), "should be 'module:name'"),
        (GOOD.replace(":make_handwritten", ""), "bench='backends.demo.bench', but should be 'module:name'"),
        (GOOD.replace('bench = "backends.demo.bench:make_handwritten"', 'bench = ""'), "bench=''"),
        (
            GOOD.replace(
                'lazy_input_size = { value = true, reason = "demo" }', "lazy_input_size = { value = true }"
            ),
            "needs a boolean 'value' and a 'reason'",
        ),
        (
            GOOD.replace('book_tab = "PyTorch"', 'book_tab = "Pytorch"'),
            "book_tab='Pytorch', but should be one of",
        ),
        (GOOD.replace('"(out, in)"', '"(in,out)"'), "facts.weight_layout='(in,out)', but should be one of"),
        (_with_table(GOOD, "facts", 'colour = "red"'), "unknown fact 'colour'"),
        (_with_table(GOOD, "capabilities", 'flying = { value = true, reason = "x" }'), "unknown capability"),
        (_top(GOOD, 'family = "nowhere"'), "family 'nowhere' needs"),
        ("name = ", "cannot read it"),
    ],
)
def test_a_bad_declaration_names_its_file_and_problem(tmp_path, text, message):
    path = tmp_path / "backend.toml"
    path.write_text(text)
    with pytest.raises(DeclarationError, match="backend.toml") as info:
        parse_declaration(path)
    assert message in str(info.value)


# GOOD with BatchNorm declared: its conventions become required facts.
GOOD_BATCHNORM = GOOD.replace(
    'batchnorm = { value = false, reason = "demo" }', 'batchnorm = { value = true, reason = "demo" }'
).replace(
    'grad_state_before_backward = "none"\n',
    'grad_state_before_backward = "none"\nbatchnorm_momentum = 0.1\nbatchnorm_eps = 1e-5\n'
    'batchnorm_running_var = "unbiased"\nfrozen_batchnorm = "training"\n'
    'batchnorm_statistics_update = "forward"\nbatchnorm_inference_debias = "none"\n',
)


@pytest.mark.parametrize("key", list(BATCHNORM_FACTS))
def test_a_backend_with_batchnorm_must_state_each_of_its_conventions(tmp_path, key):
    assert parse_declaration_text(GOOD_BATCHNORM, tmp_path).facts[key] is not None
    text = GOOD_BATCHNORM.replace(
        next(line for line in GOOD_BATCHNORM.splitlines() if line.startswith(f"{key} =")) + "\n", ""
    )
    with pytest.raises(DeclarationError, match=f"lacks {key!r}"):
        parse_declaration_text(text, tmp_path)


def test_a_batchnorm_fact_must_have_its_kind():
    text = GOOD_BATCHNORM.replace("batchnorm_momentum = 0.1", 'batchnorm_momentum = "0.1"')
    with pytest.raises(DeclarationError, match="facts.batchnorm_momentum='0.1', but should be a float"):
        parse_declaration_text(text)


def test_a_family_shares_tables_and_a_member_overrides_key_by_key(tmp_path):
    (tmp_path / "_demo.toml").write_text(
        'env = "shared"\n[run_env_vars]\nA = "family"\nB = "family"\n[facts]\nweight_layout = "(in, out)"\n'
    )
    text = _without(GOOD, "env").replace(
        "[capabilities]", 'family = "demo"\n[run_env_vars]\nB = "member"\n\n[capabilities]'
    )
    entry = parse_declaration_text(text, tmp_path)
    assert (entry.env, dict(entry.run_env_vars)) == ("shared", {"A": "family", "B": "member"})
    assert entry.weight_layout == "(out, in)"  # the member's own fact wins


def test_a_family_file_cannot_share_identity_keys(tmp_path):
    (tmp_path / "_demo.toml").write_text('name = "stolen"\n')
    with pytest.raises(DeclarationError, match="_demo.toml: key 'name' cannot be shared by a family"):
        parse_declaration_text(_top(GOOD, 'family = "demo"'), tmp_path)


def test_two_backends_cannot_claim_one_name(tmp_path):
    for folder, synonyms in (("a", "[]"), ("b", '["demo"]')):
        (tmp_path / folder).mkdir()
        text = _top(GOOD.replace('"demo"', f'"{folder}"', 1), f"synonyms = {synonyms}")
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
