"""`paramparity spec` and `paramparity inspect`: look at a model spec or a parameter file without
any framework. Bad input is a one-line error and exit code 2. Everything taken from a file (names,
metadata, spec fields) is escaped before it is printed, so nothing reaches the terminal raw."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from common.commands.textable import format_table
from common.core.models import BOOK_SPECS, load_spec
from common.core.portable import read_params
from common.core.safetensors_io import open_file
from common.core.spec import ModelSpec
from common.core.untrusted import load_json, printable

MAX_ROWS = 1000  # tensors listed without --all
MAX_SHOWN_VALUE = 2000  # characters of one metadata value


def add_parsers(commands) -> None:
    spec = commands.add_parser(
        "spec",
        help="validate a model spec and list its canonical parameters",
        description="NAME is a book model (" + ", ".join(BOOK_SPECS) + ") or a JSON "
        'spec file: {"in_features": 4, "layers": [{"kind": "dense", "units": 8}, '
        '{"kind": "relu"}, ...], "ties": [[2, 4]]}',
    )
    spec.add_argument("name", metavar="NAME")
    spec.set_defaults(run=run_spec)

    inspect = commands.add_parser(
        "inspect",
        help="check a parameter file and list what it holds",
        description="Read a .safetensors file (nothing in it is executed) and list "
        f"its tensors (the first {MAX_ROWS}, or --all) and metadata; with --spec, run every "
        "import check.",
    )
    inspect.add_argument("path")
    inspect.add_argument("--spec", help="book model name or JSON spec file to check the file against")
    inspect.add_argument("--all", action="store_true", help=f"list every tensor, not only {MAX_ROWS}")
    inspect.set_defaults(run=run_inspect)


def run_spec(args: argparse.Namespace) -> int:
    spec = load_spec(args.name)
    rows = [[p.name, str(p.shape), ", ".join(p.positions)] for p in spec.params]
    emit(
        f"{printable(spec.name, 200)}: in_features={spec.in_features}, out_features={spec.out_features}, "
        f"{len(spec.params)} unique parameters"
    )
    emit(format_table(["canonical name", "shape (out, in)", "used at"], rows))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec) if args.spec else None
    for line in inspect_lines(args.path, spec, list_all=args.all, label=args.spec):
        emit(line)
    return 0


def inspect_lines(
    path: str, spec: ModelSpec | None = None, *, list_all: bool = False, label: str | None = None
) -> list[str]:
    """What ``inspect`` prints, escaped, one entry per line; ParamFileError for a bad file."""
    if spec is not None:
        values, metadata = read_params(path, spec)
        rows = [[name, "F32", str(array.shape), _norm(array)] for name, array in values.items()]
        total = len(rows)
    else:
        with open_file(path) as file:
            listed = file.names if list_all else file.names[:MAX_ROWS]
            rows = []
            for name in listed:
                entry = file.entry(name)
                rows.append([printable(name, 200), entry.dtype, str(entry.shape), _norm(file.load(name))])
            metadata, total = file.metadata, len(file.names)
    lines = format_table(["tensor", "dtype", "shape", "norm"], rows).split("\n")
    if total > len(rows):
        lines.append(f"... and {total - len(rows)} more tensors ({total} in all; --all lists every one)")
    for key, value in sorted(metadata.items()):  # the reference reader keeps no order
        lines.append(f"{printable(key, 200)}: {printable(_compact(value), MAX_SHOWN_VALUE)}")
    if spec is not None:
        lines.append(f"ok: {printable(path)} passes every import check for '{printable(label or spec.name)}'")
    return lines


def emit(text: str) -> None:
    """Print already-escaped text; characters the terminal's encoding lacks become escapes."""
    encoding = sys.stdout.encoding or "utf-8"
    sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")


def _norm(array: np.ndarray) -> str:
    wide = np.complex128 if array.dtype.kind == "c" else np.float64  # float16 would overflow
    with np.errstate(all="ignore"):
        return f"{float(np.linalg.norm(array.astype(wide).ravel())):.4g}"


def _compact(value: str) -> str:
    """A JSON value re-serialized compactly (non-ASCII escaped), else the text as it is."""
    try:
        return json.dumps(load_json(value))
    except ValueError:
        return value
