"""The behaviour probe: run in one backend's environment, it drives the adapter through the book's
scenarios and writes a JSON behaviour record. `python -m common.commands.probe --backend torch --out rec.json`

Framework code runs only inside the adapter; this module records what the adapter observes.
Everything but the "timing" field is deterministic, so two runs give identical records.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.commands.fanout import child_main
from common.core import oracle
from common.core.interface import Backend
from common.core.models import BATCHNORM, BOOK_SPECS, EMBED_TIED
from common.core.oracle import Loss
from common.core.spec import BatchNorm, Dense, ModelSpec, param_name
from common.declarations import declaration
from common.registry import load_backend

RECORD_VERSION = 1
SEED = 0


def probe(backend_name: str) -> dict[str, Any]:
    started = time.monotonic()
    backend = load_backend(backend_name, suite=True)  # one-off programs, as in the suite
    record: dict[str, Any] = {
        "record_version": RECORD_VERSION,
        "backend": backend.name,
        "ok": True,
        "versions": backend.versions(),
        "capabilities": {
            key: {"value": capability.value, "reason": capability.reason}
            for key, capability in declaration(backend.name).capabilities.items()
        },
        "mechanisms": {
            "weight_layout": backend.weight_layout,
            "lazy": backend.lazy_mechanism,
            "tie": backend.tie_mechanism,
        },
        "models": {name: probe_model(backend, spec) for name, spec in BOOK_SPECS.items()},
        "state": probe_state(backend),
        "embedding": probe_embedding(backend),
    }
    record["timing"] = {"seconds": round(time.monotonic() - started, 2)}
    return record


def probe_model(backend: Backend, spec: ModelSpec) -> dict[str, Any]:
    backend.seed(SEED)
    model = backend.build_mlp(spec)
    result: dict[str, Any] = {"unbuilt": backend.unbuilt_params(model)}
    x = oracle.sample_input(spec)
    backend.forward(model, x)
    params = backend.list_params(model)
    result["params"] = [dataclasses.asdict(p) for p in params]
    result["init_stats"] = {
        p.name: {"mean": _round(np.mean(value)), "std": _round(np.std(value))}
        for p in params
        if p.name.endswith(".weight")
        for value in [backend.get_param(model, p.name)]
    }
    result["grad_state_before_backward"] = backend.grad_state_before_backward(model)
    result["facts"] = backend.native_facts(model)

    weights = oracle.initial_weights(spec, SEED)
    backend.load_params(model, weights)
    reference = oracle.backward(spec, weights, x, Loss())
    grads = backend.backward(model, x, Loss())
    result["max_abs_diff"] = {"forward": _max_abs(backend.forward(model, x), reference.output)}
    result["max_abs_diff"].update(
        {f"grad {name}": _max_abs(grads[name], reference.grads[name]) for name in reference.grads}
    )
    if spec.ties:
        result["ties"] = probe_ties(backend, spec, model, weights, grads, x)
    result["native_file"] = probe_native_file(backend, model)
    return result


def probe_ties(backend: Backend, spec: ModelSpec, model, weights, grads, x) -> dict[str, Any]:
    untied_model = backend.build_mlp(spec.untied())
    backend.load_params(untied_model, oracle.expand_tied(spec, weights))
    untied_grads = backend.backward(untied_model, x, Loss())
    shared = [p for p in spec.params if len(p.positions) > 1]
    is_sum = all(
        np.allclose(grads[p.name], sum(untied_grads[q] for q in p.positions), rtol=1e-5, atol=1e-6)
        for p in shared
    )
    owner, user = shared[0].positions[:2]
    value = backend.get_param(model, owner).copy()
    value.flat[0] = 100.0
    backend.set_param(model, owner, value)
    seen = float(backend.get_param(model, user).flat[0]) == 100.0
    backend.load_params(model, weights)
    return {
        "unique_params": len(backend.list_params(model)),
        "untied_unique_params": len(backend.list_params(untied_model)),
        "write_seen_at_other_position": seen,
        "written": owner,
        "observed": user,
        "tied_grad_is_sum_of_uses": bool(is_sum),
    }


# One feature, one batch: mean 3.75, biased variance 7.1875, unbiased 9.583.
STATE_BATCH = np.array([[1.0], [2.0], [4.0], [8.0]], np.float32)


def probe_state(backend: Backend) -> dict[str, Any]:
    """BatchNorm and freezing as the framework behaves, observed with one batch (not read from
    the declaration, which the suite checks): the default momentum (canonical) and epsilon, the
    running variance kept, what a frozen BatchNorm does while training, and how the framework
    lists and serializes state. A backend that declares no BatchNorm says why."""
    entry = declaration(backend.name)
    lacking = [c for c in ("batchnorm", "freezing") if not entry.capability(c).value]
    if lacking:
        return {"not_built": "; ".join(f"{c}: {entry.capability(c).reason}" for c in lacking)}
    mean, biased = float(STATE_BATCH.mean()), float(STATE_BATCH.var())

    def one_training_forward(layer: BatchNorm) -> tuple[dict[str, np.ndarray], np.ndarray]:
        spec = ModelSpec("probe-state", 1, (layer, Dense(1)))
        model = backend.build_mlp(spec)
        backend.load_params(
            model,
            {
                "layers.0.weight": np.ones(1),
                "layers.0.bias": np.zeros(1),
                "layers.1.weight": np.ones((1, 1)),
                "layers.1.bias": np.zeros(1),
            },
        )
        output = backend.forward(model, STATE_BATCH, mode="training")
        return backend.state_snapshot(model), output

    state, _ = one_training_forward(BatchNorm(eps=0.5))
    momentum = float(state["layers.0.running_mean"][0]) / mean
    state, output = one_training_forward(BatchNorm(momentum=1.0))
    running_var = float(state["layers.0.running_var"][0])
    variance = (
        "unbiased"
        if np.isclose(running_var, biased * 4 / 3, rtol=1e-4)
        else ("biased" if np.isclose(running_var, biased, rtol=1e-4) else f"neither: {running_var:.5g}")
    )
    # y = (x - mean) / sqrt(biased + eps) for the batch's largest value: solve for eps.
    eps = float(((STATE_BATCH[-1, 0] - mean) / output[-1, 0]) ** 2 - biased)
    frozen, _ = one_training_forward(BatchNorm(momentum=0.5, trainable=False))
    frozen_mode = "training" if frozen["layers.0.running_mean"][0] != 0 else "inference"

    model = backend.build_mlp(BATCHNORM)
    params, state_infos = backend.list_params(model), backend.list_state(model)
    state_call, state_names = backend.state_listing(model)
    listing_call, listing_names = backend.listing(model)
    known = {s.native_name for s in state_infos}
    return {
        "default_momentum": _round(momentum),
        "default_eps": float(f"{eps:.2g}"),
        "running_var": variance,
        "frozen_batchnorm": frozen_mode,
        "parameters": len(params),
        "state": [f"{s.name} <- {s.native_name}" for s in state_infos],
        "state_listing": {"call": state_call, "names": list(state_names)},
        "native_only_state": [name for name in state_names if name not in known],
        "parameter_listing_holds_state": sorted(known & set(listing_names)),
        "listing_call": listing_call,
        "serializations": {
            call: {
                "entries": len(names),
                "state": sum(name in known for name in names),
                "native_only_state": sum(name in names for name in state_names if name not in known),
            }
            for call, names in backend.serializations(model).items()
        },
    }


# Repeated ids on purpose: the lookup's gradient is a scatter-add.
EMBED_IDS = np.array([3, 0, 3, 7, 0, 3, 12, 15])


def probe_embedding(backend: Backend) -> dict[str, Any]:
    """The embedding tied to the output projection (embed_tied), as the framework holds it: the
    mechanism (the output layer's own class, against the untied Dense's), how listings and the
    framework's own file hold the table, whether its file keeps the tie on load, and the numbers
    against the oracle. A backend that declares no embedding says why."""
    capability = declaration(backend.name).capability("embedding")
    if not capability.value:
        return {"not_built": f"embedding: {capability.reason}"}
    spec = EMBED_TIED
    model = backend.build_mlp(spec)
    weights = oracle.initial_weights(spec, SEED)
    backend.load_params(model, weights)
    table, reader = spec.params[0].positions
    layers = backend.position_table(model)
    projection, dense = layers[spec.embed_slot.readers[0]], layers[spec.dense_slots[0].path]
    listing_call, listing_names = backend.listing(model)
    keys = backend.native_file_keys(model)
    reference = oracle.backward(spec, weights, EMBED_IDS, Loss())
    grads = backend.backward(model, EMBED_IDS, Loss())
    with tempfile.TemporaryDirectory() as scratch:
        call = backend.save_native_file(model, str(Path(scratch) / "params"))
        loaded = backend.build_mlp(spec)
        backend.import_native_file(loaded, str(Path(scratch) / "params"))
    value = backend.get_param(loaded, table).copy()
    value.flat[0] = 100.0
    backend.set_param(loaded, table, value)
    return {
        "mechanism": "same_parameter" if type(projection) is type(dense) else "table_read",
        "projection_class": type(projection).__qualname__,
        # where the framework's own Dense kernel is (in, out), reading the table means transposing it
        "transposed": backend.transposes(spec, param_name(spec.dense_slots[0].path, "weight")),
        "one_object": backend.param_object(model, reader) is backend.param_object(model, table),
        "unique_params": len(backend.list_params(model)),
        "listing": {"call": listing_call, "entries": len(listing_names)},
        "native_file": {
            "call": call,
            "entries": len(keys),
            "table_copies": sum(owner == table for owner in keys.values()),
        },
        "tie_kept_on_native_load": float(backend.get_param(loaded, reader).flat[0]) == 100.0,
        "max_abs_diff": {
            "forward": _max_abs(backend.forward(model, EMBED_IDS), reference.output),
            **{f"grad {name}": _max_abs(grads[name], reference.grads[name]) for name in reference.grads},
        },
    }


def probe_native_file(backend: Backend, model) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        call = backend.save_native_file(model, str(Path(scratch) / "params"))
        entries, values = backend.native_file_values(model, str(Path(scratch) / "params"))
    snapshot = backend.snapshot(model)
    same = all(
        np.array_equal(backend.canonical_of(model.spec, name, values[name]), snapshot[name])
        for name in snapshot
    ) and set(values) == set(snapshot)
    return {"call": call, "entries": list(entries), "round_trip_equal": bool(same)}


def _round(value: float) -> float:
    return float(f"{float(value):.4g}")


def _max_abs(a, b) -> float:
    return float(f"{float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))):.3g}")


def main(argv: list[str] | None = None) -> int:
    return child_main(__doc__.splitlines()[0], lambda args: probe(args.backend), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
