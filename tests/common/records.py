"""Framework-free behaviour records shaped like common.commands.probe's, for testing the diff alone."""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np

from common.commands.probe import initialisation_record
from common.core import init_fit
from common.core.initializers import SCHEMES, ZEROS, Initializers, Law
from common.core.models import BOOK_SPECS, CUSTOM_TIED


class NumpyInitializers(Initializers):
    """A framework whose Dense draws from the given laws themselves (D2L 6.3 records)."""

    def __init__(self, weight: Law, bias: Law) -> None:
        self.weight, self.bias = weight, bias

    def dense(self, fan_in, fan_out, seed, scheme=None):
        rng = np.random.default_rng(seed)
        return (
            init_fit.draw(self.weight, (fan_out, fan_in), fan_in, fan_out, rng),
            init_fit.draw(self.bias, (fan_out,), fan_in, fan_out, rng),
        )


@functools.cache
def _initialisation() -> dict[str, Any]:
    """Glorot-uniform weights and zero biases, as every Keras; sampled once, copied into each record."""
    weight = SCHEMES["xavier"].weight
    return initialisation_record(NumpyInitializers(weight, ZEROS), {"weight": weight, "bias": ZEROS})


def _params(spec, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "native_name": f"{prefix}{p.name}",
            "native_shape": list(p.shape),
            "shape": list(p.shape),
            "dtype": "float32",
            "native_class": f"{prefix}Param",
            "positions": list(p.positions),
        }
        for p in spec.params
    ]


def make_record(backend: str, **changes: Any) -> dict[str, Any]:
    """A record where every framework behaves alike; ``changes`` maps "a.b.c" paths to new values."""
    models = {}
    for name, spec in BOOK_SPECS.items():
        params = _params(spec, "x.")
        models[name] = {
            "unbuilt": {},
            "params": params,
            "init_stats": {
                p["name"]: {"mean": 0.0, "std": 0.1} for p in params if p["name"].endswith("weight")
            },
            "grad_state_before_backward": "none",
            "facts": {
                "listing_call": "net.params()",
                "listing_names": [p["native_name"] for p in params],
                "layer_list_call": "net.layers",
                "layer_list_length": len(spec.layers),
                "unique_layer_objects": len(spec.layers),
                "serializations": {"save()": [p["native_name"] for p in params]},
                "tie_identity": {"same parameter object": True} if spec.ties else {},
            },
            "max_abs_diff": {"forward": 1e-8, "grad layers.0.weight": 2e-8},
            "native_file": {
                "call": "save()",
                "entries": [p["native_name"] for p in params],
                "round_trip_equal": True,
                "clone_output_identical": True,
            },
        }
    models["tied"]["ties"] = {
        "unique_params": 6,
        "untied_unique_params": 8,
        "write_seen_at_other_position": True,
        "written": "layers.2.weight",
        "observed": "layers.4.weight",
        "tied_grad_is_sum_of_uses": True,
    }
    record = {
        "record_version": 1,
        "backend": backend,
        "ok": True,
        "versions": {"framework": "1.0", "python": "3.11.7", "numpy": "2.0"},
        "mechanisms": {"weight_layout": "(out, in)", "lazy": "lazy", "tie": "same object"},
        "models": models,
        "state": {
            "default_momentum": 0.1,
            "default_eps": 1e-5,
            "running_var": "unbiased",
            "frozen_batchnorm": "training",
            "parameters": 10,
            "state": ["layers.1.running_mean <- bn.mean", "layers.1.running_var <- bn.var"],
            "state_listing": {"call": "net.buffers()", "names": ["bn.mean", "bn.var", "bn.count"]},
            "native_only_state": ["bn.count"],
            "parameter_listing_holds_state": [],
            "listing_call": "net.params()",
            "serializations": {"save()": {"entries": 15, "state": 4, "native_only_state": 1}},
        },
        "initialisation": _initialisation(),
        "lazy": {
            "layer_list_call": "net.layers",
            "layer_objects_before_forward": 3,
            "params_before_forward": 0,
            "shapes_after_first_forward": {
                name: list(shape) for name, shape in BOOK_SPECS["mlp"].param_shapes.items()
            },
            "all_shapes_known_after_first_forward": True,
        },
        "custom_layer": {
            "custom_class": "x.MyLinear",
            "built_in_class": "x.Linear",
            "params": _params(CUSTOM_TIED, "x."),
            "listing": {
                "call": "net.params()",
                "names": [p["native_name"] for p in _params(CUSTOM_TIED, "x.")],
            },
            "custom_params_listed": True,
            "parameter_class_as_built_in": True,
            "tie_identity": {"same parameter object": True},
            "write_seen_at_other_position": True,
            "matches_oracle": True,
            "trains_as_oracle": True,
            "max_abs_diff": {"forward": 1e-8, "grad layers.2.weight": 5e-8, "loss after 20 steps": 3e-8},
        },
        "file_io": {
            "model": "custom_tied",
            "call": "save()",
            "entries": [p["native_name"] for p in _params(CUSTOM_TIED, "x.")],
            "bytes": 4000,
            "custom_class": "MyLinear",
            "custom_class_named_in_file": False,
            "clone_output_identical": True,
        },
        "timing": {"seconds": 1.0},
    }
    record = copy.deepcopy(record)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        target = record
        for key in parents:
            target = target[key]
        target[leaf] = value
    return copy.deepcopy(record)


def failed_record(backend: str, error: str = "ImportError: no module named tensorflow") -> dict[str, Any]:
    return {"backend": backend, "ok": False, "error": error}


def varied_records(backends: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """One record per backend, each with values of its own (names, classes, calls, layouts, numbers
    within the oracle tolerance), as real frameworks give: every renderer must show them all.
    ``token(backend)`` is in each of its records and breaks nowhere when wrapped."""
    records = {}
    for k, backend in enumerate(backends):
        record = make_record(backend)
        record["versions"]["framework"] = f"{k + 1}.{k}.0"
        record["mechanisms"]["weight_layout"] = ("(out, in)", "(in, out)")[k % 2]
        record["mechanisms"]["tie"] = f"the same {token(backend)} object at both positions"
        for model in record["models"].values():
            for p in model["params"]:
                p["native_name"] = f"{backend}_net/{p['name']}"
                p["native_class"] = token(backend)
            model["facts"]["listing_call"] = f"net.{backend}_params()"
            model["max_abs_diff"] = {  # float noise: a different worst gradient per backend
                "forward": 1.7e-9 * (k + 1),
                "grad layers.0.weight": 2.1e-8 * (k + 1),
                "grad layers.0.bias": 7e-8 / (k + 1),
            }
        record["models"]["mlp"]["unbuilt"] = {f"{backend}_dense0.weight": "<UninitializedParameter>"}
        records[backend] = record
    return records


def token(backend: str) -> str:
    """A word unique to ``backend`` with no separator in it."""
    return "Cls" + "".join(ch for ch in backend.title() if ch.isalnum()) + "Param"
