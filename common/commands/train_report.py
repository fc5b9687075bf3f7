"""`make train`: every backend trains the tied MLP (and its untied baseline) in its own env, in
parallel; this process, in the base env, draws the pictures and answers "why share?" with numbers.
It imports no framework; matplotlib draws the PNGs, embedded in one self-contained HTML page.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from common.commands.fanout import module_command, prepare_envs, run_parallel, write_atomically, write_record
from common.commands.textable import format_table
from common.commands.training import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    baseline_start,
    layer_of,
    oracle_losses,
    parameter_budget,
)
from common.config import add_backends_option, add_timeout_option, parse_backend_list
from common.core.models import TIED
from common.envs import ROOT

REPORTS = ROOT / "reports"
Record = Mapping[str, Any]
LOSS_PARITY_STEPS = 50  # the conformance suite checks these steps against the oracle


def summary_rows(records: Mapping[str, Record], reference: Sequence[float]) -> list[list[str]]:
    rows = []
    window = min(LOSS_PARITY_STEPS, len(reference))
    for name, record in records.items():
        if not record.get("ok"):
            rows.append([name, "FAILED", record.get("error", ""), "", "", ""])
            continue
        tied, untied = record["tied"]["losses"], record["untied"]["losses"]
        drift = max(abs(a - b) / abs(b) for a, b in zip(tied[:window], reference[:window], strict=True))
        rows.append(
            [
                name,
                f"{tied[-1]:.4f}",
                f"{untied[-1]:.4f}",
                f"{drift:.1e}",
                f"{record['checks']['max_sum_minus_applied']:.1e}",
                "yes" if record["checks"]["tied_positions_equal_every_step"] else "NO",
            ]
        )
    return rows


SUMMARY_HEADERS = [
    "backend",
    "final loss tied",
    "final loss untied",
    f"max rel |loss - oracle| (first {LOSS_PARITY_STEPS})",
    "max |sum of uses - applied grad|",
    "tied positions equal every step",
]


def sharing_table(
    records: Mapping[str, Record], reference_tied: float, reference_untied: float
) -> list[list[str]]:
    tied, untied = parameter_budget(TIED), parameter_budget(TIED.untied())
    rows = [
        ["unique parameter tensors", tied["tensors"], untied["tensors"]],
        ["scalars", tied["scalars"], untied["scalars"]],
        ["float32 memory (bytes)", tied["bytes"], untied["bytes"]],
        ["final loss, numpy oracle", f"{reference_tied:.4f}", f"{reference_untied:.4f}"],
    ]
    for name, record in records.items():
        if record.get("ok"):
            rows.append(
                [
                    f"final loss, {name}",
                    f"{record['tied']['losses'][-1]:.4f}",
                    f"{record['untied']['losses'][-1]:.4f}",
                ]
            )
            rows.append(
                [
                    f"parameters listed by {name}",
                    record["tied"]["listed_params"],
                    record["untied"]["listed_params"],
                ]
            )
    return [[str(c) for c in row] for row in rows]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def draw(
    records: Mapping[str, Record], reference: Sequence[float], reference_untied: Sequence[float]
) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {name: r for name, r in records.items() if r.get("ok")}
    pictures = {}

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, record in ok.items():
        ax.plot(record["tied"]["losses"], label=f"{name} (tied)", linewidth=1.5)
    ax.plot(reference, "k--", label="numpy oracle (tied)", linewidth=1)
    ax.plot(reference_untied, "k:", label="numpy oracle (untied baseline)", linewidth=1)
    ax.set(
        xlabel="SGD step",
        ylabel="MSE loss",
        yscale="log",
        title="Tied MLP: loss, every backend and the oracle",
    )
    ax.legend(fontsize=8)
    pictures["train_loss.png"] = _png(fig)
    plt.close(fig)

    if ok:
        fig, axes = plt.subplots(1, len(ok), figsize=(4.2 * len(ok), 3.6), sharey=True, squeeze=False)
        for ax, (name, record) in zip(axes[0], ok.items(), strict=True):
            history = record["tied"]["history"]
            positions = [p for p in history[0]["grad_norms"] if p.endswith(".weight")]
            for position in dict.fromkeys(positions):
                if position in history[0]["contribution_norms"]:
                    continue
                ax.plot([h["grad_norms"][position] for h in history], label=f"{layer_of(position)} grad")
            shared = [p for p in positions if p in history[0]["contribution_norms"]]
            if shared:
                ax.plot(
                    [h["grad_norms"][shared[0]] for h in history],
                    "k",
                    linewidth=2,
                    label=f"shared {layer_of(shared[0])} applied (sum)",
                )
                for position in shared:
                    ax.plot(
                        [h["contribution_norms"][position] for h in history],
                        "--",
                        label=f"use at {layer_of(position)}",
                    )
            ax.set(title=name, xlabel="SGD step", yscale="log")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("weight gradient norm")
        fig.suptitle("Per-layer weight-gradient norms; the shared layer's two contributions dashed", y=1.03)
        pictures["train_grad_norms.png"] = _png(fig)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, record in ok.items():
            ax.plot(record["tied"]["losses"], label=f"{name} tied")
            ax.plot(record["untied"]["losses"], "--", label=f"{name} untied")
        ax.set(
            xlabel="SGD step", ylabel="MSE loss", yscale="log", title="Why share? Tied vs untied, same data"
        )
        ax.legend(fontsize=7, ncol=2)
        pictures["train_sharing.png"] = _png(fig)
        plt.close(fig)
    return pictures


def render_html(
    records: Mapping[str, Record],
    summary: list[list[str]],
    sharing: list[list[str]],
    pictures: Mapping[str, bytes],
    steps: int,
    lr: float,
) -> str:
    def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    images = "".join(
        f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' "
        f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        for name, data in pictures.items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>paramparity train</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f0f0f0}}
img{{max-width:100%}}</style>
</head><body><h1>Training the tied MLP (D2L 6.2 exercises)</h1>
<p>Plain SGD, lr={lr}, {steps} full-batch steps on a seeded synthetic regression set; every backend starts
from the same seeded weights. The untied baseline starts from the same values copied into both positions.</p>
{table(SUMMARY_HEADERS, summary)}
<h2>Why is sharing a good idea? Measured</h2>
{table(["", "tied", "untied"], sharing)}
{images}</body></html>
"""


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train the tied MLP in every backend; write reports/train.html",
        description="Train the tied MLP and its untied baseline with each framework's "
        "SGD, from identical seeded weights; plot and summarize.",
    )
    add_backends_option(parser)
    add_timeout_option(parser)
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"SGD steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"learning rate (default {DEFAULT_LR})")
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from common.errors import UsageError

    if args.steps < 1 or not args.lr > 0:
        raise UsageError(f"--steps={args.steps} and --lr={args.lr}, but should be >= 1 and > 0")
    backends = parse_backend_list(args.backends)
    prepare_envs(backends)
    command = module_command("common.commands.training", "--steps", str(args.steps), "--lr", str(args.lr))
    records = run_parallel(backends, command, what="training", timeout=args.timeout)
    tied_start, untied_start = baseline_start(TIED)
    reference = oracle_losses(TIED, tied_start, args.steps, args.lr)
    reference_untied = oracle_losses(TIED.untied(), untied_start, args.steps, args.lr)
    summary = summary_rows(records, reference)
    sharing = sharing_table(records, reference[-1], reference_untied[-1])
    pictures = draw(records, reference, reference_untied)
    REPORTS.mkdir(exist_ok=True)
    for name, data in pictures.items():
        write_atomically(REPORTS / name, data)
    write_atomically(
        REPORTS / "train.html", render_html(records, summary, sharing, pictures, args.steps, args.lr)
    )
    for name, record in records.items():
        write_record(str(REPORTS / f"train_{name}.json"), record)
    print(f"\nTied MLP, SGD lr={args.lr}, {args.steps} steps (numpy oracle final loss {reference[-1]:.4f})")
    print(format_table(SUMMARY_HEADERS, summary, max_width=22))
    print("\nWhy share? (tied vs untied)")
    print(format_table(["", "tied", "untied"], sharing))
    print(f"\nwrote reports/train.html and {', '.join('reports/' + n for n in pictures)}")
    failed = [name for name, r in records.items() if not r.get("ok")]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
