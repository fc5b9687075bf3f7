"""D2L 6.3 (parameter initialisation), framework-free: the laws an initializer may follow, the
book's built-in and custom schemes as data, and what a backend's ``initializers`` module
implements (``Initializers``).

A law is data (``Law``): a kind and one parameter, fixed or ``sqrt(numerator / fan)``. A
backend declares its default laws as facts (``default_weight_init``, ``default_bias_init`` in
its backend.toml, read by ``law_from_table``); common/core/init_fit.py tests samples against
them. Nothing here imports numpy, so the declarations stay readable without it.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FANS = ("fan_in", "fan_out", "fan_in + fan_out")
# A Dense weight's fans: fan_in is its input width, fan_out its units (torch and Keras alike).
# Each kind's parameter, as the declaration names it: the uniform bound a of U(-a, a), the
# standard deviation of the (truncated) normal, the constant's value.
PARAMETER = {
    "constant": "value",
    "uniform": "bound",
    "normal": "std",
    "truncated_normal": "std",
    "zeroed_uniform": "bound",  # the book's custom init: U(-a, a), then zero where |w| < cut
}
KINDS = tuple(PARAMETER)
# jax.random.truncated_normal(-2, 2) in variance_scaling, as Keras' TruncatedNormal: cut at two
# standard deviations of the untruncated normal, rescaled so the truncated std is the stated one.
TRUNCATION = 2.0


@dataclass(frozen=True)
class Scale:
    """A law's parameter: ``value``, or ``sqrt(numerator / fan)`` at a layer's sizes."""

    value: float | None = None
    numerator: float | None = None
    fan: str | None = None

    def at(self, fan_in: int, fan_out: int) -> float:
        if self.value is not None:
            return float(self.value)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_in + fan_out": fan_in + fan_out}[self.fan]
        return math.sqrt(self.numerator / fan)

    @property
    def text(self) -> str:
        if self.value is not None:
            return f"{self.value:g}"
        fan = f"({self.fan})" if "+" in self.fan else self.fan
        return f"sqrt({self.numerator:g} / {fan})"


@dataclass(frozen=True)
class Law:
    kind: str  # one of KINDS
    scale: Scale
    cut: float = 0.0  # zeroed_uniform only

    def parameter(self, fan_in: int, fan_out: int) -> float:
        return self.scale.at(fan_in, fan_out)

    @property
    def parameter_name(self) -> str:
        return PARAMETER[self.kind]

    @property
    def text(self) -> str:
        """The formula in the book's notation; also the law's key in a behaviour record."""
        fixed, s = self.scale.value is not None, self.scale.text
        if self.kind == "constant":
            return f"constant {s}"
        if self.kind == "uniform":
            return f"U(-{s}, {s})" if fixed else f"U(-a, a), a = {s}"
        if self.kind == "normal":
            return f"N(0, {s}^2)" if fixed else f"N(0, s^2), s = {s}"
        if self.kind == "truncated_normal":
            return f"normal truncated at ±{TRUNCATION:g} sigma, std {s}"
        return f"U(-{s}, {s}), zeroed where |w| < {self.cut:g}"


def constant(value: float) -> Law:
    return Law("constant", Scale(value=float(value)))


ZEROS = constant(0.0)


def law_from_table(table: Any) -> Law:
    """A declared law, e.g. ``{ kind = "uniform", bound = { numerator = 1.0, fan = "fan_in" } }``
    or ``{ kind = "constant", value = 0.0 }``; ValueError says what is wrong, in one line."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{table!r}, but should be a table with a 'kind'")
    kind = table.get("kind")
    if kind not in PARAMETER:
        raise ValueError(f"kind={kind!r}, but should be one of: {', '.join(KINDS)}")
    name = PARAMETER[kind]
    allowed = {"kind", name, *(("cut",) if kind == "zeroed_uniform" else ())}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} for kind {kind!r}; valid: {', '.join(sorted(allowed))}")
    return Law(kind, _scale(name, table.get(name)), float(_number("cut", table.get("cut", 0.0))))


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r}, but should be a number")
    return float(value)


def _scale(name: str, value: Any) -> Scale:
    if isinstance(value, Mapping):
        if set(value) != {"numerator", "fan"} or value["fan"] not in FANS:
            raise ValueError(
                f"{name}={dict(value)!r}, but should be a number or "
                f"{{ numerator = <number>, fan = one of {', '.join(map(repr, FANS))} }}"
            )
        numerator = _number(f"{name}.numerator", value["numerator"])
        if numerator <= 0:
            raise ValueError(f"{name}.numerator={numerator!r}, but should be positive")
        return Scale(numerator=numerator, fan=value["fan"])
    return Scale(value=_number(name, value))


# -- the book's schemes (D2L 6.3.2): each through the framework's own initializer API -----------------
@dataclass(frozen=True)
class Scheme:
    name: str
    api: str  # what the book calls, in words; each framework maps the name to its own call
    weight: Law
    bias: Law = ZEROS


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("normal", "built-in normal initializer, mean 0, std 0.01", Law("normal", Scale(value=0.01))),
        Scheme("constant", "built-in constant initializer, 1", constant(1.0)),
        Scheme("constant_42", "built-in constant initializer, 42 (the book's second layer)", constant(42.0)),
        Scheme(
            "xavier",
            "built-in Xavier (Glorot) uniform initializer",
            Law("uniform", Scale(numerator=6.0, fan="fan_in + fan_out")),
        ),
        Scheme(
            "custom",
            "the book's custom initializer: U(-10, 10), then zero where |w| < 5",
            Law("zeroed_uniform", Scale(value=10.0), cut=5.0),
        ),
    )
}


class Initializers(abc.ABC):
    """What ``backends/<name>/initializers.py`` implements (its declaration's ``initializers``
    key names the class): a fresh Dense built with the framework's own layer and initializers.
    The framework is imported in ``__init__``, after the backend's env vars are set."""

    @abc.abstractmethod
    def dense(self, fan_in: int, fan_out: int, seed: int, scheme: Scheme | None = None) -> tuple[Any, Any]:
        """A fresh Dense(fan_in -> fan_out), seeded with ``seed``: its (weight, bias) as numpy
        arrays, the weight in the canonical (fan_out, fan_in) layout. ``scheme`` None: the
        framework's defaults; else the scheme's initializers, through the framework's own API
        (``scheme.weight`` and ``scheme.bias`` hold the parameters the book gives)."""


__all__ = [
    "FANS",
    "KINDS",
    "SCHEMES",
    "TRUNCATION",
    "ZEROS",
    "Initializers",
    "Law",
    "Scale",
    "Scheme",
    "constant",
    "law_from_table",
]
