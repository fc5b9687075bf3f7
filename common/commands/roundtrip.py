"""`make roundtrip`: export from every backend, import into every backend, compare.

Phase 1 (each backend in its env, in parallel): build each book model with the framework's own
default initial values, export it, and record its forward output and gradients on a fixed input.
Phase 2: every backend imports every file, recomputes, and checks the tie still holds.
The state models (a BatchNorm with its running statistics, a frozen layer, a tied BatchNorm) go
through too; a backend that declares no BatchNorm or freezing has an "n/a" cell saying so.
This process (base env) compares and prints one exporter x importer matrix per model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.commands.textable import format_table
from common.config import add_backends_option, add_timeout_option, parse_backend_list
from common.core import oracle, portable
from common.core.expectations import ATOL, RTOL, STATE_ATOL, STATE_RTOL
from common.core.models import BOOK_SPECS, EMBED_SPECS, STATE_SPECS
from common.core.oracle import Loss
from common.core.spec import ModelSpec, spec_from_dict
from common.declarations import declaration


def _explicit(spec: ModelSpec) -> ModelSpec:
    """The spec with every BatchNorm's momentum and eps set: frameworks' defaults differ (Keras'
    eps is 1e-3, the others' 1e-5), so only explicit settings give every backend one function."""
    data = spec.to_dict()
    for layer in data["layers"]:
        if layer["kind"] == "batchnorm":
            layer.setdefault("momentum", 0.1)
            layer.setdefault("eps", 1e-5)
    return spec_from_dict(data)


MODELS: dict[str, ModelSpec] = {
    **BOOK_SPECS,
    **{name: _explicit(spec) for name, spec in STATE_SPECS.items()},
    **EMBED_SPECS,
}


def _not_built(backend_name: str, spec: ModelSpec) -> str:
    """Why ``backend_name`` builds no ``spec`` (a capability it declares it lacks), or ""."""
    entry = declaration(backend_name)
    lacking = [c for c in spec.needs if not entry.capability(c).value]
    return f"{backend_name} declares no {' or '.join(lacking)}" if lacking else ""


def _outputs(backend, model, spec) -> dict[str, Any]:
    """The inference output (for a model with state it reads the running statistics the file
    carried), and the gradients. A model with state gets no gradients here: a training pass is
    where frameworks' declared conventions differ (a frozen BatchNorm runs in inference mode in
    Keras, in training mode elsewhere), which the suite checks against the oracle per backend."""
    x = oracle.sample_input(spec, batch=4)
    forward = backend.forward(model, x).tolist()
    grads = {} if spec.state else backend.backward(model, x, Loss())
    return {"forward": forward, "grads": {k: np.asarray(v).tolist() for k, v in grads.items()}}


def export_phase(backend, folder: Path) -> dict[str, Any]:
    results = {}
    for name, spec in MODELS.items():
        if _not_built(backend.name, spec):
            results[name] = {"not_built": _not_built(backend.name, spec)}
            continue
        backend.seed(0)
        model = backend.build_mlp(spec)
        backend.materialize(model)
        if spec.state:  # statistics of a trained model, not the framework's start
            backend.load_state(model, oracle.initial_state(spec, seed=1))
        portable.export_params(backend, model, str(folder / f"{backend.name}-{name}.safetensors"))
        results[name] = _outputs(backend, model, spec)
    return results


def import_phase(backend, folder: Path, sources: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for source in sources:
        for name, spec in MODELS.items():
            path = folder / f"{source}-{name}.safetensors"
            key = f"{source}/{name}"
            why = _not_built(backend.name, spec) or _not_built(source, spec)
            if why:
                results[key] = {"not_built": why}
                continue
            try:
                model = backend.build_mlp(spec)
                portable.import_params(backend, model, str(path))
                results[key] = _outputs(backend, model, spec) | {
                    "ties_hold": _ties_hold(backend, model, spec)
                }
            except Exception as error:  # one bad file must not hide the other cells
                results[key] = {"error": f"{type(error).__name__}: {error}"}
    return results


def _ties_hold(backend, model, spec) -> bool | None:
    shared = [p for p in spec.params if len(p.positions) > 1]
    if not shared:
        return None
    owner, user = shared[0].positions[:2]
    value = backend.get_param(model, owner)
    probe = value.copy()
    probe.flat[0] += 1.0
    backend.set_param(model, owner, probe)
    seen = np.array_equal(backend.get_param(model, user), probe)
    backend.set_param(model, owner, value)
    return bool(seen)


def compare(exported: dict[str, Any], imported: dict[str, Any]) -> dict[str, str]:
    """Per check: "ok", or what differs."""
    if "error" in imported:
        return {"error": imported["error"]}
    if "not_built" in imported or "not_built" in exported:
        return {"n/a": imported.get("not_built") or exported["not_built"]}
    # A BatchNorm divides by a standard deviation, which amplifies float32 rounding.
    rtol, atol = (STATE_RTOL, STATE_ATOL) if not exported["grads"] else (RTOL, ATOL)
    forward = np.allclose(imported["forward"], exported["forward"], rtol=rtol, atol=atol)
    grads = set(imported["grads"]) == set(exported["grads"]) and all(
        np.allclose(imported["grads"][k], exported["grads"][k], rtol=RTOL, atol=ATOL)
        for k in exported["grads"]
    )
    ties = imported["ties_hold"]
    return {
        "forward": "ok" if forward else "DIFFERS",
        "grads": "n/a" if not exported["grads"] else ("ok" if grads else "DIFFERS"),
        "ties": "n/a" if ties is None else ("ok" if ties else "BROKEN"),
    }


PASS = ("ok", "n/a")


def cell_text(result: dict[str, str]) -> str:
    """E.g. "fwd ok  grad ok  ties ok"; the ties check is left out for models without ties."""
    if "error" in result:
        return "ERROR: " + result["error"]
    if "n/a" in result:
        return "n/a: " + result["n/a"]
    labels = {"forward": "fwd", "grads": "grad", "ties": "ties"}
    return "  ".join(f"{labels[k]} {v}" for k, v in result.items() if v != "n/a")


def matrices(exports: dict[str, Any], imports: dict[str, Any]) -> dict[str, list[tuple[list[str], bool]]]:
    """One exporter x importer table per book model: each row's cells, and whether all passed."""
    tables = {}
    for name in MODELS:
        rows = []
        for source, export_record in exports.items():
            row, row_ok = [source], True
            for import_record in imports.values():
                if not export_record.get("ok"):
                    result = {"error": f"export failed: {export_record.get('error')}"}
                elif not import_record.get("ok"):
                    result = {"error": f"import failed: {import_record.get('error')}"}
                else:
                    result = compare(
                        export_record["models"][name], import_record["results"][f"{source}/{name}"]
                    )
                row_ok &= "error" not in result and (
                    "n/a" in result or all(v in PASS for v in result.values())
                )
                row.append(cell_text(result))
            rows.append((row, row_ok))
        tables[name] = rows
    return tables


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "roundtrip",
        help="export from each backend, import into every backend, print the matrix",
        description="Export each book model from every backend (safetensors, canonical names) and import it "
        "into every backend; check forward outputs, gradients and ties.",
    )
    add_backends_option(parser)
    add_timeout_option(parser)
    parser.set_defaults(run=run_roundtrip)


def run_roundtrip(args: argparse.Namespace) -> int:
    from common import children
    from common.commands.fanout import module_command, prepare_envs, run_parallel

    backends = parse_backend_list(args.backends)
    prepare_envs(backends)
    with children.temporary_directory() as scratch:  # removed even if this process is killed
        folder = str(scratch)
        exports = run_parallel(
            backends,
            module_command("common.commands.roundtrip", "--phase", "export", "--dir", folder),
            what="exporting",
            timeout=args.timeout,
        )
        sources = ",".join(b for b in backends if exports[b].get("ok"))
        imports = run_parallel(
            backends,
            module_command(
                "common.commands.roundtrip",
                "--phase",
                "import",
                "--dir",
                folder,
                "--sources",
                sources or "none",
            ),
            what="importing",
            timeout=args.timeout,
        )
    tables = matrices(exports, imports)
    all_ok = all(ok for rows in tables.values() for _, ok in rows)
    for name, rows in tables.items():
        print(f"\n{name}: exported by (rows) -> imported into (columns): forward, gradients, ties")
        cells = [row for row, _ in rows]
        print(format_table(["export \\ import", *imports], cells, ["" if ok else "!" for _, ok in rows]))
    print("\nround trip: " + ("all pass" if all_ok else "FAILED"))
    return 0 if all_ok else 1


def main(argv: list[str] | None = None) -> int:
    from common.commands.fanout import child_main
    from common.registry import load_backend

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--phase", choices=("export", "import"), required=True)
        parser.add_argument("--dir", required=True)
        parser.add_argument("--sources", default="", help="comma-separated exporters whose files to import")

    def produce(args: argparse.Namespace) -> dict[str, Any]:
        backend = load_backend(args.backend)
        if args.phase == "export":
            return {"models": export_phase(backend, Path(args.dir))}
        sources = [s for s in args.sources.split(",") if s and s != "none"]
        return {"results": import_phase(backend, Path(args.dir), sources)}

    return child_main("One round-trip phase in one backend.", produce, arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
