"""D2L 6.3: this backend's initializers, as distributions. A fresh Dense's default weight and bias
follow the laws its declaration states, and the book's built-in and custom schemes, through the
framework's own API, follow the laws in common.core.initializers.SCHEMES: a Kolmogorov-Smirnov
test and a support check at each of init_fit.PAIRS (common/core/init_fit.py), at init_fit.ALPHA."""

from __future__ import annotations

import dataclasses
import math

import pytest

from common.commands.probe import load_initializers
from common.core import init_fit
from common.core.initializers import SCHEMES, Initializers, Law
from common.declarations import declaration

PARAMETERS = ("weight", "bias")


@pytest.fixture(scope="module")
def initializers(backend) -> Initializers:
    entry = declaration(backend.name)
    if not entry.initializers:
        pytest.skip(f"{entry.path} declares no initializers")
    return load_initializers(entry)


@pytest.fixture(scope="module")
def default_samples(initializers) -> dict[tuple[int, int], tuple]:
    return {pair: init_fit.sample_dense(initializers, *pair) for pair in init_fit.PAIRS}


def assert_follows(law: Law, samples: dict[tuple[int, int], object], what: str) -> None:
    __tracebackhide__ = True
    for (fan_in, fan_out), values in samples.items():
        fit = init_fit.fit(law, values, fan_in, fan_out)
        assert fit.passes(), (
            f"{what} at (fan_in, fan_out) = ({fan_in}, {fan_out}): KS p={fit.p_value:.3g}, tails p="
            f"{fit.tail_p_value:.3g}, {fit.outside_support} of {fit.n} values outside the support, "
            f"fitted {law.parameter_name}="
            f"{fit.fitted:.4g}, but should follow {law.text} ({law.parameter_name} {fit.expected:.4g}, "
            f"p >= {init_fit.ALPHA:g})"
        )


@pytest.mark.parametrize("parameter", PARAMETERS)
def test_the_default_init_follows_the_declared_law(backend, default_samples, parameter):
    law = declaration(backend.name).default_init(parameter)
    index = PARAMETERS.index(parameter)
    samples = {pair: values[index] for pair, values in default_samples.items()}
    assert_follows(law, samples, f"default {parameter}")


def same_spread(law: Law, kind: str) -> Law:
    """``law``'s spread in another shape: a uniform's bound is sqrt(3) standard deviations."""
    factor = {("uniform", "normal"): 1 / 3, ("truncated_normal", "uniform"): 3.0}.get((law.kind, kind), 1.0)
    scale = law.scale
    if scale.value is not None:
        scale = dataclasses.replace(scale, value=scale.value * math.sqrt(factor))
    else:
        scale = dataclasses.replace(scale, numerator=scale.numerator * factor)
    return Law(kind, scale)


def test_the_fit_rejects_another_shape_of_the_same_spread(backend, default_samples):
    """The check above can fail: the same default weights, held to a law of the same variance but
    another shape (a normal for a uniform, a uniform for a normal), are rejected at some size. A
    constant law (a framework whose default weight is one number) is held to that number plus one."""
    law = declaration(backend.name).default_init("weight")
    if law.kind == "constant":
        wrong = dataclasses.replace(law, scale=dataclasses.replace(law.scale, value=law.scale.value + 1))
    else:
        wrong = same_spread(law, "uniform" if "normal" in law.kind else "normal")
    fits = [init_fit.fit(wrong, weights, *pair) for pair, (weights, _) in default_samples.items()]
    assert not all(f.passes() for f in fits), f"the default weights passed as {wrong.text}, a wrong law"


@pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=list(SCHEMES))
def test_a_book_scheme_gives_its_law(initializers, scheme):
    samples = {
        pair: init_fit.sample_dense(initializers, *pair, scheme, biases=False) for pair in init_fit.PAIRS
    }
    assert_follows(scheme.weight, {pair: w for pair, (w, _) in samples.items()}, f"{scheme.api}: weight")
    assert_follows(scheme.bias, {pair: b for pair, (_, b) in samples.items()}, f"{scheme.api}: bias")
