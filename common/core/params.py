"""Validation of parameter values against a spec, done in full before anything is assigned."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.core.spec import ModelSpec
from common.errors import ParamFileError


def check_value(spec: ModelSpec, name: str, value: object, *, allow_nonfinite: bool = False) -> np.ndarray:
    """One value for the unique parameter ``name``, as float32 in canonical layout."""
    shape = spec.param_shapes[name]
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ParamFileError(f"{name}: dtype={array.dtype}, but should be a real number type (float32)")
    if array.shape != shape:
        raise ParamFileError(f"{name}: shape={array.shape}, but should be {shape}")
    if not allow_nonfinite and not np.all(np.isfinite(array)):
        raise ParamFileError(f"{name}: holds NaN or Inf values (pass allow_nonfinite=True to accept them)")
    return array.astype(np.float32)


def check_values(
    spec: ModelSpec, values: Mapping[str, object], *, allow_nonfinite: bool = False
) -> dict[str, np.ndarray]:
    """A full set of unique parameters: every name present, none extra, shapes and dtypes right."""
    expected = list(spec.param_shapes)
    missing = [name for name in expected if name not in values]
    aliases = {pos: p.name for p in spec.params for pos in p.positions if pos != p.name}
    extra = [name for name in values if name not in spec.param_shapes]
    if missing:
        raise ParamFileError(f"missing parameter(s) {missing} for spec {spec.name!r}")
    if extra:
        hints = [
            f"{n} (an alias of {aliases[n]}: store tied parameters once)" if n in aliases else n
            for n in extra
        ]
        raise ParamFileError(
            f"unexpected parameter(s) {hints} for spec {spec.name!r}; expected: {', '.join(expected)}"
        )
    return {name: check_value(spec, name, values[name], allow_nonfinite=allow_nonfinite) for name in expected}
