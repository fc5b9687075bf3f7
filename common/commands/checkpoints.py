"""`paramparity import` and `paramparity export`: parameter files of either convention, the
portable one (common.core.portable) and the one of ``safetensors.torch.save_model``
(common.core.torch_checkpoint), which stores a tie once and records its dropped names in the
metadata.

``import FILE --model NAME`` reads the file here first, framework-free, so a bad file is one
line and exit 2 before any backend starts; then every selected backend, each in its own
environment, loads it into a fresh model and checks what it holds: the file's values exactly,
each tie still a tie (a write through one use shows at every other), and forward (and, without
state, the gradients) agreeing with the oracle on the file's values. One line per backend;
exit 1 if any failed. ``export`` writes a file of either convention from a file or from the
oracle's seeded weights, without any framework.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.commands.inspect import emit
from common.config import add_backends_option, add_timeout_option, parse_backend_list
from common.core import oracle, portable
from common.core.expectations import ATOL, RTOL, STATE_ATOL, STATE_RTOL, conventions_of
from common.core.models import NAMED_SPECS, load_spec
from common.core.oracle import Loss
from common.core.spec import ModelSpec, spec_from_dict
from common.core.torch_checkpoint import (
    CONVENTIONS,
    PORTABLE,
    SAVE_MODEL,
    import_checkpoint,
    read_checkpoint,
    tie_summary,
    write_torch_checkpoint,
)
from common.core.untrusted import printable, read_json_file
from common.declarations import declaration
from common.errors import UsageError

BATCH = 4  # the input every backend's forward and gradients are checked on


def add_parsers(commands) -> None:
    models = ", ".join(NAMED_SPECS)
    importer = commands.add_parser(
        "import",
        help="load a parameter file into every backend: values, ties, oracle",
        description="Read FILE (a paramparity portable file, or one written by "
        "safetensors.torch.save_model, told apart by its metadata), then load it into a fresh model "
        "of the spec in every selected backend, each in its own environment, and check the file's "
        "values, every tie (a write through one use shows at the others) and forward and gradients "
        "against the oracle. Exit 2 for a bad file or spec, 1 if a backend fails.",
    )
    importer.add_argument("file", metavar="FILE")
    importer.add_argument("--model", required=True, help=f"a named model ({models}) or a JSON spec file")
    add_backends_option(importer)
    add_timeout_option(importer)
    importer.set_defaults(run=run_import)

    exporter = commands.add_parser(
        "export",
        help="write a parameter file, portable or in save_model's convention, without a framework",
        description="Write OUT from FILE (either convention) or from the oracle's seeded weights. "
        f"--format {SAVE_MODEL}: torch state_dict keys, each tie stored once under its first key "
        f"and its other keys recorded in the metadata, as safetensors.torch.save_model writes; "
        f"--format {PORTABLE}: canonical names, ties as aliases (paramparity/1).",
    )
    exporter.add_argument("out", metavar="OUT")
    exporter.add_argument("--model", required=True, help=f"a named model ({models}) or a JSON spec file")
    exporter.add_argument("--format", required=True, choices=CONVENTIONS, dest="convention")
    exporter.add_argument(
        "--from", dest="source", metavar="FILE", help="take the values from this file (default: the oracle's)"
    )
    exporter.set_defaults(run=run_export)


# -- export: framework-free ---------------------------------------------------------------------
def run_export(args: argparse.Namespace) -> int:
    spec = load_spec(args.model)
    if args.source:
        checkpoint = read_checkpoint(args.source, spec)
        values, state, origin = checkpoint.values, checkpoint.state, printable(args.source)
    else:
        values, state, origin = oracle.initial_weights(spec), None, "the oracle's seeded weights"
    try:
        if args.convention == SAVE_MODEL:
            write_torch_checkpoint(args.out, spec, values)
        else:
            portable.write_portable(args.out, spec, values, state=state or None)
    except OSError as error:
        raise UsageError(
            f"cannot write {printable(args.out)}: {printable(error.strerror or error)}"
        ) from None
    emit(f"wrote {printable(args.out)}: {describe(args.convention, spec)}, values from {origin}")
    return 0


def describe(convention: str, spec: ModelSpec) -> str:
    """One phrase: the convention, the spec and how its ties are stored."""
    if convention == SAVE_MODEL:
        ties = tie_summary(spec)
        stored = f"ties recorded as dropped -> kept: {', '.join(ties)}" if ties else "no ties"
        return f"save_model file of spec {printable(spec.name, 100)}, {stored}"
    shared = [p for p in spec.params if len(p.positions) > 1]
    aliases = ", ".join(f"{'='.join(p.positions)}" for p in shared) or "none"
    return f"portable file of spec {printable(spec.name, 100)}, tied parameters stored once: {aliases}"


# -- import: one child per backend --------------------------------------------------------------
def run_import(args: argparse.Namespace) -> int:
    from common import children
    from common.commands.fanout import module_command, prepare_envs, run_parallel

    spec = load_spec(args.model)
    checkpoint = read_checkpoint(args.file, spec)  # a bad file ends here, before any backend starts
    backends = parse_backend_list(args.backends)
    emit(f"{printable(args.file)}: {describe(checkpoint.convention, spec)}")
    prepare_envs(backends)
    with children.temporary_directory() as scratch:  # removed even if this process is killed
        spec_file = scratch / "spec.json"
        spec_file.write_text(json.dumps(spec.to_dict()))
        records = run_parallel(
            backends,
            module_command(
                "common.commands.checkpoints", "--file", os.path.abspath(args.file), "--spec", str(spec_file)
            ),
            what="importing",
            timeout=args.timeout,
        )
    verdicts = {name: verdict(record) for name, record in records.items()}
    for name, (_, text) in verdicts.items():
        emit(f"{name}: {text}")
    ran = [name for name, (status, _) in verdicts.items() if status != "n/a"]
    failed = [name for name, (status, _) in verdicts.items() if status == "FAILED"]
    if failed or not ran:
        why = (
            f"{len(failed)} of {len(verdicts)} backends failed"
            if failed
            else "no backend could build the spec"
        )
        emit(f"import: FAILED: {why}")
        return 1
    emit(
        f"import: ok in {len(ran)} of {len(verdicts)} backends"
        + (" (the others n/a)" if len(ran) < len(verdicts) else "")
    )
    return 0


def not_built(backend_name: str, spec: ModelSpec) -> str:
    """Why ``backend_name`` builds no ``spec``: a capability it declares it lacks, with its
    declared reason; "" when it builds it."""
    entry = declaration(backend_name)
    lacking = [name for name in spec.needs if not entry.capability(name).value]
    return "; ".join(
        f"{backend_name} declares no {name} ({entry.capability(name).reason})" for name in lacking
    )


def import_and_check(backend, spec: ModelSpec, path: str) -> dict[str, Any]:
    """Load ``path`` into a fresh model of ``spec`` in ``backend`` and measure what the import
    command judges: values, ties, forward and gradients against the oracle. Plain JSON."""
    model = backend.build_mlp(spec)
    checkpoint = import_checkpoint(backend, model, path)
    values, state = checkpoint.values, checkpoint.state
    held = backend.snapshot(model)
    changed = sorted(name for name, value in values.items() if not np.array_equal(held[name], value))
    x = oracle.sample_input(spec, batch=BATCH)
    conventions = (
        conventions_of(declaration(backend.name).facts) if spec.has_batchnorm else oracle.Conventions()
    )
    rtol, atol = (STATE_RTOL, STATE_ATOL) if state else (RTOL, ATOL)
    expected = oracle.forward(spec, values, x, state=state or None, conventions=conventions)
    result = {
        "convention": checkpoint.convention,
        "values_differ": changed,
        "forward": _agreement(backend.forward(model, x), expected, rtol, atol),
    }
    if not state:  # a training pass is where state conventions differ; the suite checks those
        grads = backend.backward(model, x, Loss())
        reference = oracle.backward(spec, values, x, Loss()).grads
        # A frozen parameter's gradient may or may not be reported; a trainable one's must be.
        result["grads"] = {
            p.name: _agreement(grads.get(p.name, np.full(p.shape, np.nan)), reference[p.name], RTOL, ATOL)
            for p in spec.params
            if p.trainable
        }
    result["ties"] = tie_checks(backend, model, spec)
    return result


def tie_checks(backend, model, spec: ModelSpec) -> dict[str, bool]:
    """For each tied parameter and each ordered pair of its positions: does a write through the
    first show at the second? The value is restored after each write."""
    seen = {}
    for p in (p for p in spec.params if len(p.positions) > 1):
        for written in p.positions:
            value = backend.get_param(model, written)
            probe = value.copy()
            probe.flat[0] += 1.0
            backend.set_param(model, written, probe)
            for observed in p.positions:
                if observed != written:
                    seen[f"{written} -> {observed}"] = bool(
                        np.array_equal(backend.get_param(model, observed), probe)
                    )
            backend.set_param(model, written, value)
    return seen


def _agreement(actual, expected, rtol: float, atol: float) -> dict[str, Any]:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return {"ok": False, "max_delta": None, "shape": list(actual.shape)}
    delta = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    return {"ok": bool(np.allclose(actual, expected, rtol=rtol, atol=atol)), "max_delta": delta}


def verdict(record: dict[str, Any]) -> tuple[str, str]:
    """("ok" | "n/a" | "FAILED", one line) for one backend's record."""
    if not record.get("ok"):
        return "FAILED", f"FAILED: {printable(record.get('error', 'no record'), 300)}"
    if record.get("not_built"):
        return "n/a", f"n/a: {printable(record['not_built'], 300)}"
    result = record["result"]
    problems = []
    if result["values_differ"]:
        problems.append(f"values differ from the file at {', '.join(result['values_differ'])}")
    broken = [pair for pair, seen in result["ties"].items() if not seen]
    if broken:
        problems.append(f"tie broken: a write does not show at {', '.join(broken)}")
    forward = result["forward"]
    if not forward["ok"]:
        problems.append(f"forward differs from the oracle (max |delta| {_delta(forward)})")
    grads = result.get("grads", {})
    wrong = [name for name, agreement in grads.items() if not agreement["ok"]]
    if wrong:
        problems.append(f"gradients differ from the oracle at {', '.join(wrong)}")
    if problems:
        return "FAILED", "FAILED: " + "; ".join(problems)
    ties = f"{len(result['ties'])} tie writes seen at the other use" if result["ties"] else "no ties"
    checked = "forward and gradients agree" if grads else "forward agrees"
    worst = max([forward["max_delta"], *(g["max_delta"] for g in grads.values())])
    return "ok", f"ok: values exact, {ties}, {checked} with the oracle (max |delta| {worst:.2g})"


def _delta(agreement: dict[str, Any]) -> str:
    delta = agreement["max_delta"]
    return f"{delta:.3g}" if delta is not None else f"none: output shape {agreement.get('shape')}"


def main(argv: list[str] | None = None) -> int:
    """One backend's import (a child of ``paramparity import``, in that backend's environment)."""
    from common.commands.fanout import child_main
    from common.registry import load_backend

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--file", required=True)
        parser.add_argument("--spec", required=True, help="a JSON spec file, as the parent checked it")

    def produce(args: argparse.Namespace) -> dict[str, Any]:
        spec = spec_from_dict(read_json_file(Path(args.spec), max_bytes=64 * 1024**2, error=UsageError))
        backend = load_backend(args.backend)
        why = not_built(backend.name, spec)
        if why:
            return {"not_built": why}
        return {"result": import_and_check(backend, spec, args.file)}

    return child_main("Import one parameter file into one backend.", produce, arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
