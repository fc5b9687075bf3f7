"""`paramparity train` (`make train`): train a model in every backend, in its own environment,
then write the report (``train_report``: the numbers and words) as text and as a page
(``train_page``). The command sits above both, so neither imports the other's caller."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from common.commands.fanout import (
    module_command,
    prepare_envs,
    record_text,
    run_parallel,
    shown,
    writable_folder,
    write_output,
)
from common.commands.train_page import render_html
from common.commands.train_report import REPORTS, Record, build_report, render_text
from common.commands.training import (
    DEFAULT_LR,
    DEFAULT_MODEL,
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    MODELS,
    model_spec,
)
from common.config import add_backends_option, add_timeout_option, parse_backend_list
from common.errors import UsageError


def positive_int(flag: str, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, else one line, exit 2."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise UsageError(f"{flag}={text}, but should be a whole number >= {minimum}")
        return value

    return parse


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model (the tied MLP) in every backend; write reports/train.html",
        description="Train a model with each framework's SGD, from identical seeded weights, watching "
        "every layer; with a tie, against its untied baseline over several seeds. Compare with the "
        "numpy oracle, plot and summarize.",
    )
    add_backends_option(parser)
    add_timeout_option(parser)
    parser.add_argument(
        "--model",
        type=model_spec,
        default=MODELS[DEFAULT_MODEL],
        metavar="NAME",
        help=f"what to train: {', '.join(MODELS)} (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--steps",
        type=positive_int("--steps"),
        default=DEFAULT_STEPS,
        help=f"SGD steps (default {DEFAULT_STEPS})",
    )
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"learning rate (default {DEFAULT_LR})")
    parser.add_argument(
        "--seeds",
        type=positive_int("--seeds", minimum=2),
        default=DEFAULT_SEEDS,
        help=f"seeds of tied against untied, for the interval (default {DEFAULT_SEEDS}; at least 2)",
    )
    parser.add_argument("--out-dir", type=Path, default=REPORTS, help="where reports go (default: reports/)")
    parser.set_defaults(run=run_train)


def run_training(backends: Sequence[str], command, timeout: float, console=None) -> dict[str, Record]:
    """Every backend's record. Progress: on a terminal, one live line per backend (elapsed time,
    then its final state); otherwise plain lines, at most one per backend per tenth of its work."""
    from rich.console import Console
    from rich.live import Live

    from common.commands.diff import ProbeProgress  # TODO: belongs in fanout.py, beside run_parallel

    console = console or Console(stderr=True)
    if not console.is_terminal:
        return run_parallel(backends, command, sys.stderr, what="training", timeout=timeout)
    progress = ProbeProgress(backends)
    with Live(progress, console=console, refresh_per_second=8, transient=False):
        return run_parallel(backends, command, progress, what="training", timeout=timeout)


def run_train(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr={args.lr}, but should be a positive, finite number")
    spec = args.model
    backends = parse_backend_list(args.backends)
    out = writable_folder(args.out_dir, "--out-dir")  # before the training, not after
    prepare_envs(backends)
    command = module_command(
        "common.commands.training",
        *("--model", spec.name, "--steps", str(args.steps), "--lr", str(args.lr), "--seeds", str(args.seeds)),
    )
    records = run_training(backends, command, args.timeout)
    report = build_report(records, args.steps, args.lr, spec, args.seeds)
    write_output(out / "train.html", render_html(report))
    for name, record in records.items():
        write_output(out / f"train_{name}.json", record_text(record))
    width = min(shutil.get_terminal_size((100, 24)).columns, 120)
    print()
    print(render_text(report, width))
    html_file, records_file = shown(out / "train.html"), shown(out / "train_{backend}.json")
    print(f"\nwrote {html_file} (columns explained there) and {records_file}")
    failed = [name for name, record in records.items() if not record.get("ok")]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
