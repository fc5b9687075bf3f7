"""Does a sample of initial values follow a law (common/core/initializers.py)? numpy only.

``fit`` tests a sample at one (fan_in, fan_out) against a law: the one-sample
Kolmogorov-Smirnov test (statistic and asymptotic p-value written out here: no scipy in the base
environment), a support check (a uniform sample beyond its bound, a truncated normal's beyond its
cut, a constant's other values: rejected whatever the statistic) and, for a normal law, its tails
(a truncated normal's are empty). It fits the law's parameter from the sample (a uniform's bound
as sqrt(3) * rms, a normal's std as the rms) to report beside the formula's. ``identify`` names
the law a set of samples follows without being told: the kind whose fitted shape fits best, and
the fan its scale follows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.core.initializers import FANS, TRUNCATION, Initializers, Law, Scale, Scheme

# Each test's significance. An audit runs about 150 tests of true laws (10 backends, default
# weight and bias and five book schemes, at 3 sizes): at 1e-4 one of them fails by chance about
# once in 70 audits (at 1e-3, once in 7: TensorFlow's GlorotUniform at (64, 32) from seeds 0 and 1
# gave p = 0.0002, other seeds p from 0.01 to 0.99), while every wrong law tested here is
# rejected at p far below it.
ALPHA = 1e-4
# A float32 sample of U(-a, a) may reach a's float32 rounding, just above a.
SUPPORT_RTOL = 1e-6

_erf = np.vectorize(math.erf, otypes=[float])


def _phi(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF."""
    return 0.5 * (1.0 + _erf(np.asarray(z, float) / math.sqrt(2.0)))


def _truncated_sigma(std: float) -> float:
    """The untruncated sigma whose normal, cut at ±TRUNCATION sigma, has standard deviation std."""
    t = TRUNCATION
    density = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(t / math.sqrt(2))
    return std / math.sqrt(1 - 2 * t * density / mass)


def cdf(law: Law, x: np.ndarray, fan_in: int, fan_out: int, *, left: bool = False) -> np.ndarray:
    """P(X <= x), or P(X < x) with ``left`` (they differ at a law's atoms: a constant, the zeros
    of the book's custom law)."""
    x = np.asarray(x, float)
    p = law.parameter(fan_in, fan_out)
    if law.kind == "constant":
        return (x > p if left else x >= p).astype(float)
    if law.kind == "uniform":
        return np.clip((x + p) / (2 * p), 0.0, 1.0)
    if law.kind == "normal":
        return _phi(x / p)
    if law.kind == "truncated_normal":
        sigma, t = _truncated_sigma(p), TRUNCATION
        inside = (_phi(x / sigma) - _phi(-t)) / (_phi(t) - _phi(-t))
        return np.clip(inside, 0.0, 1.0)
    # zeroed_uniform: U(-p, p) with (-cut, cut) moved to an atom at 0
    base, c = np.clip((x + p) / (2 * p), 0.0, 1.0), law.cut
    below, above = (p - c) / (2 * p), (p + c) / (2 * p)
    at_zero = below if left else above
    return np.where(np.abs(x) < c, np.where(x < 0, below, np.where(x > 0, above, at_zero)), base)


def outside_support(law: Law, sample: np.ndarray, fan_in: int, fan_out: int) -> int:
    """How many values the law cannot produce."""
    x, p = np.asarray(sample, float), law.parameter(fan_in, fan_out)
    slack = 1 + SUPPORT_RTOL
    if law.kind == "constant":
        return int(np.sum(x != float(np.float32(p))))
    if law.kind == "uniform":
        return int(np.sum(np.abs(x) > p * slack))
    if law.kind == "truncated_normal":
        return int(np.sum(np.abs(x) > TRUNCATION * _truncated_sigma(p) * slack))
    if law.kind == "zeroed_uniform":
        a = np.abs(x)
        return int(np.sum((a > p * slack) | ((a != 0) & (a < law.cut / slack))))
    return 0


def ks_statistic(law: Law, sample: np.ndarray, fan_in: int, fan_out: int) -> float:
    """sup |F_n - F|, exact at atoms too: F's left limit is compared with F_n's."""
    x = np.sort(np.asarray(sample, float).ravel())
    n = x.size
    steps = np.arange(1, n + 1) / n
    above = np.max(steps - cdf(law, x, fan_in, fan_out))
    below = np.max(cdf(law, x, fan_in, fan_out, left=True) - (steps - 1 / n))
    return float(max(above, below, 0.0))


def kolmogorov_p_value(statistic: float, n: int) -> float:
    """P(D_n >= statistic) under the law, asymptotically (Kolmogorov's series, with Stephens'
    small-sample correction of the argument). Conservative where the law has atoms."""
    root = math.sqrt(n)
    lam = (root + 0.12 + 0.11 / root) * statistic
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * (k * lam) ** 2) for k in range(1, 101))
    return float(min(max(2 * total, 0.0), 1.0))


def tail_p_value(law: Law, sample: np.ndarray, fan_in: int, fan_out: int) -> float:
    """For a normal law: P(so few values beyond a truncated normal's cut), binomially. The KS test
    cannot tell a normal from one cut at 2 sigma with the same std (sup |F - G| = 0.017, under its
    critical value at a few thousand values); the cut's empty tails can. 1 for other laws."""
    if law.kind != "normal":
        return 1.0
    x, std = np.asarray(sample, float), law.parameter(fan_in, fan_out)
    cut = TRUNCATION * _truncated_sigma(std)
    q = math.erfc(cut / std / math.sqrt(2))  # P(|X| > cut) under the law
    n, k = x.size, int(np.sum(np.abs(x) > cut))
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(j + 1)
        - math.lgamma(n - j + 1)
        + j * math.log(q)
        + (n - j) * math.log1p(-q)
        for j in range(k + 1)
    ]
    top = max(terms)
    return float(min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms)))


def fitted_parameter(kind: str, sample: np.ndarray) -> float:
    """The law's parameter as the sample shows it: a uniform's bound sqrt(3) * rms (its max
    would hide a normal's tails), a normal's std the rms, a constant's value the mean, the book's
    custom law's bound the largest |w|."""
    x = np.asarray(sample, float)
    rms = float(np.sqrt(np.mean(x * x)))
    return {
        "uniform": math.sqrt(3) * rms,
        "normal": rms,
        "truncated_normal": rms,
        "constant": float(np.mean(x)),
        "zeroed_uniform": float(np.max(np.abs(x))),
    }[kind]


@dataclass(frozen=True)
class Fit:
    law: str  # the law's text
    fan_in: int
    fan_out: int
    n: int
    statistic: float
    p_value: float
    outside_support: int
    tail_p_value: float  # a normal law's tails (see tail_p_value); 1 for other laws
    expected: float  # the formula's parameter at these sizes
    fitted: float  # the same parameter, from the sample

    def passes(self, alpha: float = ALPHA) -> bool:
        return self.outside_support == 0 and self.p_value >= alpha and self.tail_p_value >= alpha


def fit(law: Law, sample: np.ndarray, fan_in: int, fan_out: int) -> Fit:
    x = np.asarray(sample, float).ravel()
    if x.size == 0:
        raise ValueError("an empty sample fits no law")
    statistic = ks_statistic(law, x, fan_in, fan_out)
    return Fit(
        law=law.text,
        fan_in=fan_in,
        fan_out=fan_out,
        n=int(x.size),
        statistic=statistic,
        p_value=kolmogorov_p_value(statistic, x.size),
        outside_support=outside_support(law, x, fan_in, fan_out),
        tail_p_value=tail_p_value(law, x, fan_in, fan_out),
        expected=law.parameter(fan_in, fan_out),
        fitted=fitted_parameter(law.kind, x),
    )


# -- naming the law a sample follows ------------------------------------------------------------------
SHAPES = ("uniform", "normal", "truncated_normal")
# A scale rule fits when its constant (the parameter, or parameter^2 * fan) varies less than this
# between the sampled sizes: a 4096-value rms is within about 2% (so the constant within 4%).
RULE_SPREAD = 1.15


@dataclass(frozen=True)
class Identified:
    law: Law  # its numerator or value fitted, to 3 significant digits
    follows: str  # "fixed", a fan of FANS, or "no rule" when none fits
    p_value: float  # the smallest over the sizes, for the shape with its fitted parameter


def identify(samples: Sequence[tuple[int, int, np.ndarray]]) -> Identified:
    """The law that samples drawn at several (fan_in, fan_out) follow: a constant where every
    value is one number, else the shape whose fitted law fits worst-size best, with the scale rule
    (fixed, or sqrt(k / fan)) whose constant varies least across the sizes."""
    values = [np.asarray(s, float).ravel() for _, _, s in samples]
    if all(np.all(v == v[0]) for v in values) and len({float(v[0]) for v in values}) == 1:
        return Identified(Law("constant", Scale(value=float(values[0][0]))), "fixed", 1.0)
    best: tuple[float, str] | None = None
    for kind in SHAPES:
        worst = min(
            fit(Law(kind, Scale(value=fitted_parameter(kind, v))), v, fan_in, fan_out).p_value
            for (fan_in, fan_out, _), v in zip(samples, values, strict=True)
        )
        if best is None or worst > best[0]:
            best = (worst, kind)
    p_value, kind = best
    parameters = [fitted_parameter(kind, v) for v in values]
    rules = {"fixed": parameters}
    for fan in FANS:
        rules[fan] = [
            p * p * Scale(numerator=1.0, fan=fan).at(fan_in, fan_out) ** -2
            for p, (fan_in, fan_out, _) in zip(parameters, samples, strict=True)
        ]
    spread = {rule: max(k) / min(k) if min(k) > 0 else math.inf for rule, k in rules.items()}
    follows = min(spread, key=spread.get)
    constant = float(f"{np.mean(rules[follows]):.3g}")
    if spread[follows] > RULE_SPREAD:
        return Identified(Law(kind, Scale(value=float(f"{np.mean(parameters):.3g}"))), "no rule", p_value)
    scale = Scale(value=constant) if follows == "fixed" else Scale(numerator=constant, fan=follows)
    return Identified(Law(kind, scale), follows, p_value)


def draw(law: Law, shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Values from the law itself, in numpy: the oracle's side of a comparison (and a test's)."""
    p = law.parameter(fan_in, fan_out)
    if law.kind == "constant":
        return np.full(shape, p)
    if law.kind == "normal":
        return rng.normal(0.0, p, shape)
    if law.kind == "truncated_normal":
        sigma, z = _truncated_sigma(p), rng.normal(size=shape)
        while np.any(outside := np.abs(z) > TRUNCATION):
            z[outside] = rng.normal(size=int(outside.sum()))
        return z * sigma
    values = rng.uniform(-p, p, shape)
    if law.kind == "zeroed_uniform":
        values[np.abs(values) < law.cut] = 0.0
    return values


# -- sampling a framework's Dense ---------------------------------------------------------------------
PAIRS = ((8, 4), (64, 32), (256, 16))  # (fan_in, fan_out): fan_in alone, the sum, fan_out differ in order
WEIGHT_VALUES = 4096  # per size: a matched-variance normal is then rejected as uniform (KS ~0.058 > 0.031)
BIAS_VALUES = 512


def draws(fan_in: int, fan_out: int, *, biases: bool = True) -> int:
    """Fresh layers to build at one size for WEIGHT_VALUES weights (and BIAS_VALUES biases)."""
    needed = math.ceil(WEIGHT_VALUES / (fan_in * fan_out))
    return max(needed, math.ceil(BIAS_VALUES / fan_out)) if biases else needed


def sample_dense(
    initializers: Initializers,
    fan_in: int,
    fan_out: int,
    scheme: Scheme | None = None,
    *,
    biases: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and biases of fresh layers seeded 0, 1, ...: the first WEIGHT_VALUES and BIAS_VALUES."""
    weights, bias_values = [], []
    for seed in range(draws(fan_in, fan_out, biases=biases)):
        weight, bias = (np.asarray(a, np.float64) for a in initializers.dense(fan_in, fan_out, seed, scheme))
        if weight.shape != (fan_out, fan_in) or bias.shape != (fan_out,):
            raise ValueError(
                f"{type(initializers).__name__}.dense({fan_in}, {fan_out}) gave weight {weight.shape} and "
                f"bias {bias.shape}, but should give {(fan_out, fan_in)} and {(fan_out,)}"
            )
        weights.append(weight.ravel())
        bias_values.append(bias.ravel())
    return np.concatenate(weights)[:WEIGHT_VALUES], np.concatenate(bias_values)[:BIAS_VALUES]


__all__ = [
    "PAIRS",
    "draw",
    "draws",
    "sample_dense",
    "ALPHA",
    "Fit",
    "Identified",
    "cdf",
    "fit",
    "identify",
    "kolmogorov_p_value",
    "ks_statistic",
]
