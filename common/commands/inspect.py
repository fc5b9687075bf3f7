"""`paramparity spec` and `paramparity inspect`: look at a model spec or a parameter file without
any framework. Bad input is a one-line error and exit code 2."""

from __future__ import annotations

import argparse
import json

import numpy as np

from common.commands.textable import format_table
from common.core.models import BOOK_SPECS, load_spec
from common.core.portable import read_params
from common.core.safetensors_io import read


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
        "its tensors and metadata; with --spec, run every import check.",
    )
    inspect.add_argument("path")
    inspect.add_argument("--spec", help="book model name or JSON spec file to check the file against")
    inspect.set_defaults(run=run_inspect)


def run_spec(args: argparse.Namespace) -> int:
    spec = load_spec(args.name)
    rows = [[p.name, str(p.shape), ", ".join(p.positions)] for p in spec.params]
    print(
        f"{spec.name}: in_features={spec.in_features}, out_features={spec.out_features}, "
        f"{len(spec.params)} unique parameters"
    )
    print(format_table(["canonical name", "shape (out, in)", "used at"], rows))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    if args.spec:
        values, metadata = read_params(args.path, load_spec(args.spec))
        tensors = values
    else:
        tensors, metadata = read(args.path)
    rows = [
        [name, str(array.dtype), str(array.shape), f"{float(np.linalg.norm(array)):.4g}"]
        for name, array in tensors.items()
    ]
    print(format_table(["tensor", "dtype", "shape", "norm"], rows))
    for key, value in metadata.items():
        try:
            value = json.dumps(json.loads(value))
        except json.JSONDecodeError:
            pass
        print(f"{key}: {value}")
    if args.spec:
        print(f"ok: {args.path} passes every import check for {args.spec!r}")
    return 0
