"""Validation of parameter values against a spec, done in full before anything is assigned.

Names and shapes can be checked from a file's header alone (``check_layout``), before any data is
read; values are checked after (``check_values``). Names from a file are escaped in messages.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.core.spec import ModelSpec
from common.core.untrusted import printable, shown
from common.errors import ParamFileError

MAX_LISTED = 10  # names listed in one error; the rest are counted


def check_value(spec: ModelSpec, name: str, value: object, *, allow_nonfinite: bool = False) -> np.ndarray:
    """One value for the unique parameter ``name``, as float32 in canonical layout. Finiteness is
    checked on the float32 value, after the cast: a float64 1e300 is inf there, and refused."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ParamFileError(
            f"{printable(name)}: dtype={array.dtype}, but should be a real number type (float32)"
        )
    check_shape(spec, name, array.shape)
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
        converted = array.astype(np.float32)
    if not allow_nonfinite and not np.all(np.isfinite(converted)):
        why = "(pass allow_nonfinite=True to accept them)"
        if np.all(np.isfinite(array)):  # finite before the cast: too large for float32
            largest = float(np.abs(array).max())
            why = (
                f"once converted to float32 ({largest:.3g} is beyond its range); "
                "pass allow_nonfinite=True to accept them"
            )
        raise ParamFileError(f"{printable(name)}: holds NaN or Inf values {why}")
    return converted


def check_shape(spec: ModelSpec, name: str, shape: tuple[int, ...]) -> None:
    expected = spec.param_shapes[name]
    if tuple(shape) != expected:
        raise ParamFileError(f"{printable(name)}: shape={shown(tuple(shape))}, but should be {expected}")


def check_names(spec: ModelSpec, names: list[str]) -> None:
    """Every unique parameter present and none extra (a tied position stored again is extra)."""
    expected = list(spec.param_shapes)
    present = set(names)
    missing = [name for name in expected if name not in present]
    if missing:
        raise ParamFileError(f"missing parameter(s) {listed(missing)} for spec {shown(spec.name)}")
    extra = [name for name in names if name not in spec.param_shapes]
    if extra:
        aliases = {pos: p.name for p in spec.params for pos in p.positions if pos != p.name}
        hints = [
            f"{n} (an alias of {aliases[n]}: store tied parameters once)" if n in aliases else n
            for n in extra[:MAX_LISTED]
        ]
        raise ParamFileError(
            f"unexpected parameter(s) {listed(hints, len(extra))} for spec {shown(spec.name)}; "
            f"expected: {listed(expected)}"
        )


def check_layout(spec: ModelSpec, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """check_names, then every shape: from a file's header alone, before its data is read."""
    check_names(spec, list(shapes))
    for name in spec.param_shapes:
        check_shape(spec, name, shapes[name])


def check_values(
    spec: ModelSpec, values: Mapping[str, object], *, allow_nonfinite: bool = False
) -> dict[str, np.ndarray]:
    """A full set of unique parameters: every name present, none extra, shapes and dtypes right."""
    check_names(spec, list(values))
    return {
        name: check_value(spec, name, values[name], allow_nonfinite=allow_nonfinite)
        for name in spec.param_shapes
    }


def listed(names: list[str], total: int | None = None) -> str:
    """The first MAX_LISTED names, escaped, and how many more."""
    total = len(names) if total is None else total
    text = shown(names[:MAX_LISTED], 1000)
    return text if total <= MAX_LISTED else f"{text} and {total - MAX_LISTED} more"


def check_state_values(
    spec: ModelSpec, values: Mapping[str, object], *, only: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """Non-trainable state (BatchNorm running statistics): every unique name of ``spec.state``
    (or of ``only``) present, none extra, shapes right, finite float32."""
    expected = list(spec.state_shapes) if only is None else list(only)
    missing = [name for name in expected if name not in values]
    extra = [name for name in values if name not in expected]
    if missing or extra:
        raise ParamFileError(
            f"state of spec {spec.name!r}: missing {listed(missing)}, unexpected {listed(extra)}; "
            f"expected: {', '.join(expected) or 'none'}"
        )
    checked = {}
    for name in expected:
        array = np.asarray(values[name])
        if array.dtype.kind not in "fiu":
            raise ParamFileError(f"{printable(name)}: dtype={array.dtype}, but should be a real number type")
        if array.shape != spec.state_shapes[name]:
            raise ParamFileError(
                f"{printable(name)}: shape={shown(array.shape)}, but should be {spec.state_shapes[name]}"
            )
        array = array.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise ParamFileError(f"{printable(name)}: holds NaN or Inf values")
        checked[name] = array
    return checked


def check_state_layout(spec: ModelSpec, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every unique piece of the spec's state present with its shape, from a header alone."""
    missing = [name for name in spec.state_shapes if name not in shapes]
    if missing:
        raise ParamFileError(f"missing state {listed(missing)} for spec {spec.name!r}")
    for name, shape in shapes.items():
        if tuple(shape) != spec.state_shapes[name]:
            raise ParamFileError(
                f"{printable(name)}: shape={shown(tuple(shape))}, but should be {spec.state_shapes[name]}"
            )
