"""common/core/init_fit.py and the laws of common/core/initializers.py, framework-free: the
Kolmogorov-Smirnov fit accepts samples of a law and rejects samples of another one (a normal where
the law is uniform, the wrong fan), and a declared law that cannot be read is one clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.commands.claims import BOOK_CLAIMS, evaluate
from common.commands.probe import initialisation_record
from common.core import init_fit
from common.core.initializers import SCHEMES, ZEROS, Law, Scale, constant, law_from_table
from common.declarations import DeclarationError
from tests.common.records import NumpyInitializers
from tests.common.test_config import GOOD, parse_declaration_text

TORCH = Law("uniform", Scale(numerator=1.0, fan="fan_in"))  # U(-a, a), a = 1 / sqrt(fan_in)
GLOROT = SCHEMES["xavier"].weight  # U(-a, a), a = sqrt(6 / (fan_in + fan_out))
LECUN = Law("truncated_normal", Scale(numerator=1.0, fan="fan_in"))
MXNET = Law("uniform", Scale(value=0.07))
LAWS = {
    "torch": TORCH,
    "glorot": GLOROT,
    "lecun": LECUN,
    "mxnet": MXNET,
    "normal": SCHEMES["normal"].weight,
    "custom": SCHEMES["custom"].weight,
    "zeros": ZEROS,
    "constant 42": constant(42.0),
}


def samples_of(law: Law, seed: int = 0) -> dict[tuple[int, int], np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        (i, o): init_fit.draw(law, (init_fit.WEIGHT_VALUES,), i, o, rng).astype(np.float32)
        for i, o in init_fit.PAIRS
    }


def passes(law: Law, samples: dict[tuple[int, int], np.ndarray]) -> bool:
    return all(init_fit.fit(law, values, *pair).passes() for pair, values in samples.items())


@pytest.mark.parametrize("law", LAWS.values(), ids=LAWS)
def test_a_sample_of_the_law_fits_it_and_its_parameter_is_recovered(law):
    samples = samples_of(law)
    assert passes(law, samples), law.text
    for (fan_in, fan_out), values in samples.items():
        fit = init_fit.fit(law, values, fan_in, fan_out)
        assert fit.fitted == pytest.approx(fit.expected, rel=0.05, abs=1e-9), (fan_in, fan_out, fit)


@pytest.mark.parametrize(
    "drawn, claimed",
    [
        # a normal where the law is uniform, with the same variance: only the shape differs
        (Law("normal", Scale(numerator=1 / 3, fan="fan_in")), TORCH),
        (Law("normal", Scale(value=0.07 / math.sqrt(3))), MXNET),
        (Law("uniform", Scale(numerator=3.0, fan="fan_in")), LECUN),  # a uniform for lecun_normal
        (Law("normal", Scale(numerator=1.0, fan="fan_in")), LECUN),  # its tails, uncut
        (
            LECUN,
            Law("normal", Scale(numerator=1.0, fan="fan_in")),
        ),  # cut tails, as a normal: KS alone passes it
        (TORCH, GLOROT),  # the right shape, the wrong fan
        (GLOROT, TORCH),
        (TORCH, MXNET),
        (Law("uniform", Scale(value=10.0)), SCHEMES["custom"].weight),  # never zeroed
        (constant(1.0), ZEROS),
    ],
    ids=lambda law: law.text.replace("±", "+-"),
)
def test_a_sample_of_another_law_is_rejected(drawn, claimed):
    assert not passes(claimed, samples_of(drawn)), f"a sample of {drawn.text} passed as {claimed.text}"


def test_the_statistic_and_p_value_by_hand():
    # One value, 0.5, against U(-1, 1): F(0.5) = 0.75, so sup |F_n - F| = 0.75 just below it.
    assert init_fit.ks_statistic(Law("uniform", Scale(value=1.0)), np.array([0.5]), 1, 1) == 0.75
    # Kolmogorov's limit: sqrt(n) D = 1.358 at p = 0.05, 1.628 at 0.01, 1.949 at 0.001.
    n = 10**8
    for root_n_d, p in ((1.358, 0.05), (1.628, 0.01), (1.949, 0.001)):
        assert init_fit.kolmogorov_p_value(root_n_d / math.sqrt(n), n) == pytest.approx(p, rel=0.02)


def test_an_atom_is_compared_from_both_sides():
    """The book's custom law has an atom at 0 (P = 1/2): exactly half zeros fit it; all zeros do not."""
    law = SCHEMES["custom"].weight
    half = np.concatenate([np.zeros(2000), np.linspace(5, 10, 1000), -np.linspace(5, 10, 1000)])
    assert init_fit.ks_statistic(law, half, 1, 1) < 0.01
    assert init_fit.ks_statistic(law, np.zeros(4000), 1, 1) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "law, follows",
    [(TORCH, "fan_in"), (GLOROT, "fan_in + fan_out"), (MXNET, "fixed"), (LECUN, "fan_in")],
    ids=["torch", "glorot", "mxnet", "lecun"],
)
def test_identify_names_the_shape_and_the_fan_it_follows(law, follows):
    found = init_fit.identify([(i, o, values) for (i, o), values in samples_of(law).items()])
    assert (found.law.kind, found.follows) == (law.kind, follows), found
    assert found.law.parameter(64, 32) == pytest.approx(law.parameter(64, 32), rel=0.05)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"kind": "gaussian", "std": 1.0}, "kind='gaussian', but should be one of"),
        ({"kind": "uniform", "std": 1.0}, "unknown key 'std' for kind 'uniform'"),
        ({"kind": "uniform", "bound": "0.07"}, "bound='0.07', but should be a number"),
        ({"kind": "uniform", "bound": {"numerator": 1.0, "fan": "fan-in"}}, "but should be a number or"),
        ({"kind": "normal", "std": {"numerator": -1.0, "fan": "fan_in"}}, "should be positive"),
    ],
)
def test_a_law_that_cannot_be_read_says_why(table, message):
    with pytest.raises(ValueError, match=message):
        law_from_table(table)


INITIALIZERS = 'initializers = "backends.demo.initializers:Demo"\n'
LAW_FACTS = (
    'default_weight_init = { kind = "uniform", bound = { numerator = 1.0, fan = "fan_in" } }\n'
    'default_bias_init = { kind = "constant", value = 0.0 }\n'
)
WITH_INITIALIZERS = GOOD.replace("[capabilities]", INITIALIZERS + "\n[capabilities]", 1) + LAW_FACTS


def test_a_declared_law_is_read_and_required_with_initializers(tmp_path):
    entry = parse_declaration_text(WITH_INITIALIZERS, tmp_path)
    assert (entry.default_init("weight"), entry.default_init("bias")) == (TORCH, ZEROS)
    with pytest.raises(DeclarationError, match="lacks 'default_weight_init'"):
        parse_declaration_text(WITH_INITIALIZERS.replace(LAW_FACTS.splitlines()[0] + "\n", ""), tmp_path)
    bad = WITH_INITIALIZERS.replace('fan = "fan_in"', 'fan = "fan_sum"')
    with pytest.raises(DeclarationError) as info:
        parse_declaration_text(bad, tmp_path)
    assert "backend.toml: facts.default_weight_init: bound=" in str(info.value) and "\n" not in str(
        info.value
    )


def _claim(quote_start: str):
    return next(c for c in BOOK_CLAIMS if c.section == "6.3" and c.quote.startswith(quote_start))


@pytest.mark.parametrize(
    "claim, holds_for, fails_for",
    [
        ("by default, MXNet draws", MXNET, TORCH),
        ("by default, Keras draws", GLOROT, TORCH),  # torch's range follows fan_in only
        ("by default, Flax draws", LECUN, TORCH),
        ("by default, PyTorch draws weight", GLOROT, SCHEMES["normal"].weight),
    ],
)
def test_a_63_claim_holds_on_its_law_and_not_on_a_wrong_one(claim, holds_for, fails_for):
    claim = _claim(claim)
    for law, status in ((holds_for, "holds"), (fails_for, "does not hold")):
        record = {
            "ok": True,
            "initialisation": initialisation_record(
                NumpyInitializers(law, ZEROS), {"weight": law, "bias": ZEROS}
            ),
        }
        verdict = evaluate(claim, record)
        assert verdict.status == status, (law.text, verdict)
