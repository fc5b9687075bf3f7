"""`make train`: every backend trains the tied MLP (and its untied baseline) in its own env, in
parallel; this process, in the base env, compares each run with the numpy oracle, draws the
pictures and answers "why is sharing a good idea?" with numbers measured in this run.

It imports no framework; matplotlib draws the PNGs, embedded in one self-contained HTML page.
Every table comes with a legend for each of its columns, and the conclusion is written by code
from the measured losses, so it says whatever this run found, including that tying lost.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import shutil
import statistics
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from common.commands.fanout import (
    module_command,
    prepare_envs,
    record_text,
    run_parallel,
    shown,
    writable_folder,
    write_output,
)
from common.commands.textable import format_table
from common.commands.training import (
    DEFAULT_LR,
    DEFAULT_STEPS,
    HELD_OUT_SAMPLES,
    N_SAMPLES,
    Step,
    TrainRun,
    baseline_start,
    layer_of,
    mse,
    oracle_run,
    parameter_budget,
    regression_data,
)
from common.config import add_backends_option, add_timeout_option, parse_backend_list
from common.core.models import TIED
from common.envs import ROOT

REPORTS = ROOT / "reports"
Record = Mapping[str, Any]
LOSS_PARITY_STEPS = 50  # the conformance suite holds these steps to the oracle
LOSS_PARITY_RTOL = 1e-5
SAME = 1e-3  # relative differences smaller than this read as "about the same"
ORACLE = "numpy oracle"
SHARED = "layers.2 = layers.4"
WINNER = {"tied": "the tied model", "untied": "the untied model", "neither": "neither"}


# -- tables: every column carries its explanation ----------------------------------------------------
@dataclass(frozen=True)
class Column:
    header: str
    explanation: str
    numeric: bool = False


@dataclass
class Table:
    columns: Sequence[Column]
    rows: list[list[str]]  # a row shorter than the columns: its last cell spans the rest

    @property
    def headers(self) -> list[str]:
        return [column.header for column in self.columns]


@dataclass(frozen=True)
class Fit:
    """Losses of the final parameters, evaluated by the float64 numpy oracle."""

    train_tied: float
    train_untied: float
    held_out_tied: float
    held_out_untied: float

    @property
    def train_change(self) -> float:
        """Tied relative to untied on the training data: > 0 means tied is worse."""
        return self.train_tied / self.train_untied - 1.0

    @property
    def held_out_change(self) -> float:
        """Tied relative to untied on held-out data: > 0 means tied is worse."""
        return self.held_out_tied / self.held_out_untied - 1.0

    @property
    def held_out_winner(self) -> str:
        change = self.held_out_change
        return "tied" if change < -SAME else "untied" if change > SAME else "neither"


@dataclass
class Figure:
    file: str  # written beside the page, reports/<file>
    title: str  # the heading, in words
    caption: str
    png: bytes = b""


@dataclass
class Reference:
    """The numpy oracle's runs of both models, with the held-out loss measured every step."""

    tied: TrainRun
    untied: TrainRun
    data: tuple[np.ndarray, ...]  # x, y, held-out x, held-out y

    @classmethod
    def compute(cls, steps: int, lr: float) -> Reference:
        x, y = regression_data(TIED)
        held_x, held_y = regression_data(TIED, held_out=HELD_OUT_SAMPLES)
        tied_start, untied_start = baseline_start(TIED)
        tied = oracle_run(TIED, tied_start, steps, lr, held_out=(held_x, held_y))
        untied = oracle_run(TIED.untied(), untied_start, steps, lr, watch=False, held_out=(held_x, held_y))
        return cls(tied, untied, (x, y, held_x, held_y))

    def fit(self, tied_params: Mapping[str, Any], untied_params: Mapping[str, Any]) -> Fit:
        x, y, held_x, held_y = self.data
        return Fit(
            mse(TIED, tied_params, x, y),
            mse(TIED.untied(), untied_params, x, y),
            mse(TIED, tied_params, held_x, held_y),
            mse(TIED.untied(), untied_params, held_x, held_y),
        )


@dataclass
class Report:
    steps: int
    lr: float
    records: Mapping[str, Record]
    reference: Reference
    fits: dict[str, Fit]  # the oracle first, then each backend with final parameters
    parity: Table
    budget: Table
    sharing: Table
    conclusion: str
    figures: dict[str, Figure] = field(default_factory=dict)


def _ok(records: Mapping[str, Record]) -> dict[str, Record]:
    return {name: record for name, record in records.items() if record.get("ok")}


def _worst(values: Sequence[float]) -> float:
    """The largest value; nan if any is nan (a diverged run), nan for none."""
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values, default=math.nan)


def deviation(losses: Sequence[float], reference: Sequence[float]) -> list[float]:
    """|loss - oracle| / oracle at every step the two runs share."""
    return [abs(a - b) / abs(b) if b else math.nan for a, b in zip(losses, reference, strict=False)]


def grad_norm_deviation(history: Sequence[Mapping[str, Any]], reference: Sequence[Step]) -> float:
    """The largest relative difference of any watched position's weight-gradient norm from the
    oracle's. Biases are left out: the output bias's gradient shrinks toward 0 as it fits, and
    float32 cancellation then makes its relative error large and meaningless."""
    worst = []
    for step, oracle_step in zip(history, reference, strict=False):
        for position, expected in oracle_step.grad_norms.items():
            if not position.endswith(".weight"):
                continue
            seen = step.get("grad_norms", {}).get(position, math.nan)
            worst.append(abs(seen - expected) / expected if expected else abs(seen))
    return _worst(worst)


def record_fit(record: Record, reference: Reference) -> Fit | None:
    """The record's final parameters evaluated on the training and held-out data; None if the
    record carries none (or unusable ones)."""
    try:
        return reference.fit(record["tied"]["final_params"], record["untied"]["final_params"])
    except (KeyError, TypeError, ValueError):
        return None


def _f(value: float, digits: int = 4) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _e(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.1e}"


def percent(fraction: float) -> str:
    """0.3731 -> "37%", 0.0071 -> "0.71%": two significant digits, never an exponent."""
    value = abs(fraction) * 100
    if math.isnan(value):
        return "nan%"
    return f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"


# -- the three tables ----------------------------------------------------------------------------------
def parity_table(records: Mapping[str, Record], reference: Reference, steps: int) -> Table:
    columns = (
        Column(
            "backend", "the backend's name (backends/<name>/backend.toml); a failed backend shows its error"
        ),
        Column("framework", "the framework version the backend ran"),
        Column(
            "loss deviation, tied",
            f"the largest |loss_backend - loss_oracle| / loss_oracle over all {steps} SGD steps of the tied "
            "model. The oracle is float64 numpy, the backends float32, so about 1e-7 is rounding; the "
            f"conformance suite holds the first {LOSS_PARITY_STEPS} steps to {LOSS_PARITY_RTOL:g}",
            numeric=True,
        ),
        Column("loss deviation, untied", "the same for the untied baseline", numeric=True),
        Column(
            "weight-grad deviation",
            "the largest relative difference between the backend's and the oracle's weight-gradient norm "
            "(the figure below), over every layer position and step of the tied model. Biases are left "
            "out: the output bias's gradient shrinks toward 0, where float32 cancellation makes a "
            "relative error meaningless",
            numeric=True,
        ),
        Column(
            "sum of uses - applied",
            "the largest |g(layers.2) + g(layers.4) - g(applied)| over every step and element: the "
            "gradient the optimizer applied to the shared layer against the sum of its two uses, each "
            "computed separately by the same framework. 0 means the framework sums the two uses exactly",
            numeric=True,
        ),
        Column(
            "tie held",
            "yes if layers.2 and layers.4 held identical values after every step (the tie survived training)",
        ),
        Column(
            "tensors listed",
            "parameter tensors the framework's own listing shows, tied / untied: 6 / 8 means it lists the "
            "shared layer once",
        ),
        Column("time", "the child's wall time for both runs, after importing the framework", numeric=True),
    )
    rows = []
    for name, record in records.items():
        if not record.get("ok"):
            rows.append([name, f"FAILED: {record.get('error', 'no error message')}"])
            continue
        tied, untied = record["tied"], record["untied"]
        seconds = record.get("timing", {}).get("seconds")
        rows.append(
            [
                name,
                str(record.get("versions", {}).get("framework", "?")),
                _e(_worst(deviation(tied["losses"], reference.tied.losses))),
                _e(_worst(deviation(untied["losses"], reference.untied.losses))),
                _e(grad_norm_deviation(tied.get("history", []), reference.tied.steps)),
                _e(record["checks"]["max_sum_minus_applied"]),
                "yes" if record["checks"]["tied_positions_equal_every_step"] else "NO",
                f"{tied.get('listed_params', '?')} / {untied.get('listed_params', '?')}",
                "?" if seconds is None else f"{seconds:.1f}s",
            ]
        )
    return Table(columns, rows)


def budget_table() -> Table:
    tied, untied = parameter_budget(TIED), parameter_budget(TIED.untied())
    columns = (
        Column(
            "model",
            "tied: the D2L model, one Dense(8) used at layers.2 and layers.4; untied: the same "
            "network with its own Dense(8) at each position",
        ),
        Column("tensors", "unique parameter tensors (weights and biases)", numeric=True),
        Column("scalars", "unique parameter values: what training has to fit", numeric=True),
        Column("float32 bytes", "memory for the parameters at 4 bytes a scalar", numeric=True),
    )
    keys = ("tensors", "scalars", "bytes")
    saved = [f"{untied[k] - tied[k]} ({percent(1 - tied[k] / untied[k])})" for k in keys]
    return Table(
        columns,
        [
            ["tied", *(str(tied[k]) for k in keys)],
            ["untied", *(str(untied[k]) for k in keys)],
            ["saved by tying", *saved],
        ],
    )


def sharing_table(fits: Mapping[str, Fit]) -> Table:
    columns = (
        Column("run", f"whose final parameters: the {ORACLE} (float64) or a backend's own SGD run"),
        Column(
            "training loss, tied",
            f"MSE of the final tied parameters on the {N_SAMPLES} training samples (evaluated by the oracle)",
            numeric=True,
        ),
        Column("training loss, untied", "the same for the untied model", numeric=True),
        Column(
            "held-out loss, tied",
            f"MSE on {HELD_OUT_SAMPLES} held-out samples: new inputs, never trained on, labelled by the "
            "same hidden function as the training set",
            numeric=True,
        ),
        Column("held-out loss, untied", "the same for the untied model", numeric=True),
        Column(
            "held-out, tied vs untied",
            f"(held-out tied - held-out untied) / held-out untied: negative means the tied model predicts "
            f"unseen data better; within {percent(SAME)} reads as a draw",
            numeric=True,
        ),
    )
    rows = []
    for name, fit in fits.items():
        change = fit.held_out_change
        sign = "-" if change < 0 else "+"
        better = {"tied": "tied better", "untied": "untied better", "neither": "a draw"}[fit.held_out_winner]
        rows.append(
            [
                name,
                _f(fit.train_tied),
                _f(fit.train_untied),
                _f(fit.held_out_tied),
                _f(fit.held_out_untied),
                f"{sign}{percent(change)} ({better})",
            ]
        )
    return Table(columns, rows)


# -- the conclusion, from the numbers ---------------------------------------------------------------------
def _compared(change: float, what: str, tied: float, untied: float) -> str:
    numbers = f"({_f(tied)} vs {_f(untied)})"
    if abs(change) < SAME:
        return f"the same {what} (within {percent(SAME)}: {_f(tied)} vs {_f(untied)})"
    return f"a {percent(change)} {'higher' if change > 0 else 'lower'} {what} {numbers}"


def conclusion(fits: Mapping[str, Fit], records: Mapping[str, Record]) -> str:
    """The answer to "why is sharing a good idea?", in words, from this run's numbers.

    ``fits`` holds the oracle's fit under ORACLE and each finished backend's under its name; the
    backends' median is what the text quotes (the oracle's when no backend finished)."""
    tied, untied = parameter_budget(TIED), parameter_budget(TIED.untied())
    backends = {name: fit for name, fit in fits.items() if name != ORACLE}
    if backends:
        measures = [each.name for each in fields(Fit)]
        fit = Fit(*(statistics.median(getattr(each, k) for each in backends.values()) for k in measures))
        source = (
            f"The numbers come from {next(iter(backends))}'s final parameters"
            if len(backends) == 1
            else f"The numbers are the median over the final parameters of {', '.join(backends)}"
        )
    else:
        fit, source = fits[ORACLE], "No backend finished, so these are the numpy oracle's numbers"
    saved = 1 - tied["scalars"] / untied["scalars"]
    text = [
        f"Tying saves {percent(saved)} of the parameters ({tied['scalars']} vs {untied['scalars']} scalars, "
        f"{tied['bytes']} vs {untied['bytes']} bytes as float32) for "
        f"{_compared(fit.train_change, 'training loss', fit.train_tied, fit.train_untied)} and "
        f"{_compared(fit.held_out_change, 'held-out loss', fit.held_out_tied, fit.held_out_untied)} "
        f"on {HELD_OUT_SAMPLES} inputs the training never saw. {source}."
    ]
    extra = untied["scalars"] - tied["scalars"]
    if fit.held_out_winner == "tied":
        cost = (
            f"costs {percent(fit.train_change)} on the training data and pays it back on unseen data"
            if fit.train_change > SAME
            else "fits the training data no worse and predicts unseen data better"
        )
        text.append(
            f"So here sharing is a good idea on both counts: forcing {SHARED} is a constraint that "
            f"{cost}, with {percent(saved)} fewer parameters to store and train."
        )
    elif fit.held_out_winner == "untied":
        text.append(
            f"So here sharing pays off in size only: the untied model's {extra} extra scalars buy a "
            f"{percent(fit.held_out_change)} lower held-out loss, and the tie did not generalize better. "
            "Sharing is worth it where that saving matters more than this difference, or where both "
            "positions should compute the same function."
        )
    else:
        text.append(
            f"So on unseen data the tie costs nothing that matters (under {percent(SAME)}), and the "
            f"{extra} saved scalars come free."
        )
    winners: dict[str, list[str]] = {}
    for name, each in backends.items():
        winners.setdefault(each.held_out_winner, []).append(name)
    if len(winners) > 1:
        text.append(
            "The backends disagree on which model predicts unseen data better: "
            + "; ".join(f"{WINNER[winner]} in {', '.join(names)}" for winner, names in winners.items())
            + "."
        )
    finished = _ok(records)
    if finished:
        worst = _worst([r["checks"]["max_sum_minus_applied"] for r in finished.values()])
        text.append(
            f"Both positions train the one shared layer: its applied gradient is the sum of the two uses' "
            f"gradients (largest difference over every step and backend: {_e(worst)})."
        )
    return " ".join(text)


# -- figures ----------------------------------------------------------------------------------------------
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def backend_style(index: int, count: int, steps: int) -> dict[str, Any]:
    """A distinct colour, line style and marker per backend; markers staggered so none hides another."""
    from matplotlib import colormaps

    every = max(1, steps // 10)
    return {
        "color": colormaps["tab10"].colors[index % 10],
        "linestyle": LINESTYLES[index % len(LINESTYLES)],
        "marker": MARKERS[index % len(MARKERS)],
        "markevery": (index * every // max(count, 1), every),
        "markersize": 5,
        "linewidth": 1.3,
    }


def deviation_curves(records: Mapping[str, Record], reference: Reference) -> dict[str, list[float]]:
    """What the loss figure draws per backend: the tied run's relative deviation from the oracle,
    nan where it is exactly 0 (a log scale has no 0)."""
    return {
        name: [v if v > 0 else math.nan for v in deviation(record["tied"]["losses"], reference.tied.losses)]
        for name, record in _ok(records).items()
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_figure(records: Mapping[str, Record], reference: Reference):
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 7.4), sharex=True, gridspec_kw={"height_ratios": [1, 1.5]}, layout="constrained"
    )
    top.plot(reference.tied.losses, color="black", linewidth=1.8, label="tied (the D2L model)")
    top.plot(reference.untied.losses, color="0.55", linestyle="--", linewidth=1.8, label="untied baseline")
    top.set(ylabel="training MSE", title=f"The loss, computed by the {ORACLE} (float64)")
    top.legend(fontsize=9)
    curves = deviation_curves(records, reference)
    steps = len(reference.tied.losses)
    drawn = False
    for index, (name, values) in enumerate(curves.items()):
        worst = _worst([v for v in values if not math.isnan(v)] or [0.0])
        label = f"{name} (max {_e(worst)})" if worst > 0 else f"{name} (identical at every step: not drawn)"
        bottom.plot(values, label=label, **backend_style(index, len(curves), steps))
        drawn |= worst > 0
    if drawn:
        bottom.set_yscale("log")
    if not curves:
        bottom.text(0.5, 0.5, "no backend finished", ha="center", va="center", transform=bottom.transAxes)
    bottom.set(
        xlabel="SGD step",
        ylabel="|loss - oracle| / oracle",
        title="Each backend's relative deviation from that loss (tied model)",
    )
    if curves:
        bottom.legend(fontsize=8, ncol=min(4, len(curves)), loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return fig


def grad_figure(records: Mapping[str, Record], reference: Reference):
    """The oracle's norms: every backend's agree with them (the parity table says how closely)."""
    plt = _pyplot()
    history = reference.tied.steps
    fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained")
    positions = [p for p in history[0].grad_norms if p.endswith(".weight")] if history else []
    shared = [p for p in positions if p in history[0].contribution_norms] if history else []
    for position in positions:
        if position not in shared:
            ax.plot([h.grad_norms[position] for h in history], linewidth=1.5, label=f"{layer_of(position)}")
    if shared:
        ax.plot(
            [h.grad_norms[shared[0]] for h in history],
            color="black",
            linewidth=2.4,
            label=f"shared {SHARED}: applied gradient (sum of both uses)",
        )
        for position, style in zip(shared, (":", "--"), strict=False):
            ax.plot(
                [h.contribution_norms[position] for h in history],
                color="black",
                linestyle=style,
                linewidth=1.3,
                label=f"its use at {layer_of(position)}",
            )
    ax.set(xlabel="SGD step", ylabel="weight-gradient norm", yscale="log")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    return fig


def sharing_figure(records: Mapping[str, Record], reference: Reference):
    """The oracle's runs: the backends' final losses are in the sharing table."""
    plt = _pyplot()
    tied, untied = reference.tied, reference.untied
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, layout="constrained")
    train_colour, held_colour = "tab:blue", "tab:orange"
    top.plot(tied.losses, color=train_colour, label="training, tied")
    top.plot(untied.losses, color=train_colour, linestyle="--", label="training, untied")
    top.plot(tied.held_out_losses, color=held_colour, label="held-out, tied")
    top.plot(untied.held_out_losses, color=held_colour, linestyle="--", label="held-out, untied")
    top.set(ylabel="MSE", title=f"Training and held-out loss ({ORACLE})")
    top.legend(fontsize=9, ncol=2)

    def relative(a: Sequence[float], b: Sequence[float]) -> list[float]:
        return [100 * (x / y - 1) for x, y in zip(a, b, strict=False)]

    bottom.axhline(0, color="0.6", linewidth=0.8)
    bottom.plot(relative(tied.losses, untied.losses), color=train_colour, label="training")
    bottom.plot(relative(tied.held_out_losses, untied.held_out_losses), color=held_colour, label="held-out")
    bottom.set(
        xlabel="SGD step",
        ylabel="tied vs untied (%)",
        title="(tied - untied) / untied: below 0 the tied model is better",
    )
    bottom.legend(fontsize=9)
    return fig


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def draw(report: Report) -> dict[str, Figure]:
    failed = [name for name, record in report.records.items() if not record.get("ok")]
    missing = f" Not drawn, because they failed: {', '.join(failed)}." if failed else ""
    grad_worst = {
        name: _e(grad_norm_deviation(record["tied"].get("history", []), report.reference.tied.steps))
        for name, record in _ok(report.records).items()
    }
    agree = (
        " Each backend's own norms, watched at every position and step, differ from these by at most: "
        + ", ".join(f"{name} {value}" for name, value in grad_worst.items())
        + " (relative)."
        if grad_worst
        else ""
    )
    figures = [
        (
            loss_figure,
            Figure(
                "train_loss.png",
                "The loss, and how far each backend is from the oracle",
                "Top: the training loss itself, tied and untied, from the numpy oracle; every "
                "backend's curve would lie on top of it. Bottom: each backend's relative deviation "
                "from it at every step, on a log scale (a gap is a step where the two are exactly "
                "equal)." + missing,
            ),
        ),
        (
            grad_figure,
            Figure(
                "train_grad_norms.png",
                "Weight-gradient norms per layer of the tied model",
                f"The numpy oracle's weight-gradient norm per layer of the tied model. The shared layer "
                f"({SHARED}) is updated with the sum of its two uses (thick line); the thin black lines are "
                f"each use's own gradient." + agree,
            ),
        ),
        (
            sharing_figure,
            Figure(
                "train_sharing.png",
                "Tied against untied, on training and held-out data",
                f"Top: the loss on the {N_SAMPLES} training samples and on {HELD_OUT_SAMPLES} held-out "
                "samples (numpy oracle; both models start as the same function). Bottom: the tied "
                "model's loss relative to the untied one's.",
            ),
        ),
    ]
    for make, figure in figures:
        figure.png = _png(make(report.records, report.reference))
    return {figure.file: figure for _, figure in figures}


# -- the report -------------------------------------------------------------------------------------------
def build_report(records: Mapping[str, Record], steps: int, lr: float, pictures: bool = True) -> Report:
    reference = Reference.compute(steps, lr)
    fits = {ORACLE: reference.fit(reference.tied.final_params, reference.untied.final_params)}
    for name, record in _ok(records).items():
        if (fit := record_fit(record, reference)) is not None:
            fits[name] = fit
    report = Report(
        steps=steps,
        lr=lr,
        records=records,
        reference=reference,
        fits=fits,
        parity=parity_table(records, reference, steps),
        budget=budget_table(),
        sharing=sharing_table(fits),
        conclusion=conclusion(fits, records),
    )
    if pictures:
        report.figures = draw(report)
    return report


STYLE = """
body{font-family:system-ui,sans-serif;line-height:1.45;max-width:1100px;margin:0 auto;padding:1em 2em;
  color:#1a1a1a}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.6em 0 .3em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
td.error{overflow-wrap:anywhere}
th{background:#f0f0f0;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.failed td{color:#a40000}
dl.legend{display:grid;grid-template-columns:fit-content(30%) 1fr;gap:.15em 1em;font-size:.88em;
  color:#333;margin:.2em 0 1.6em}
dl.legend dt{font-weight:600;overflow-wrap:anywhere}dl.legend dd{margin:0}
figure{margin:1em 0 2em}img{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#333;margin-top:.4em}
p.conclusion{background:#f3f7ff;border-left:4px solid #3465a4;padding:.7em 1em}
@media (max-width:700px){
  body{padding:.5em 1em}
  dl.legend{grid-template-columns:1fr}dl.legend dd{margin:0 0 .4em 1em}
  table.data thead{display:none}
  table.data,table.data tbody,table.data tr,table.data td{display:block;width:auto}
  table.data tr{border:1px solid #bbb;margin:0 0 .6em}
  table.data td{border:none;border-bottom:1px solid #eee;text-align:left;white-space:normal}
  table.data td::before{content:attr(data-label) ": ";font-weight:600}
}
"""


def _table_html(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th scope='col'>{esc(c.header)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for index, cell in enumerate(row):
            column = table.columns[index]
            span = len(table.columns) - index if index == len(row) - 1 else 1
            if span > 1:
                cells.append(f"<td class='error' colspan='{span}' data-label='error'>{esc(cell)}</td>")
            else:
                kind = " class='num'" if column.numeric else ""
                cells.append(f"<td{kind} data-label='{esc(column.header)}'>{esc(cell)}</td>")
        failed = " class='failed'" if len(row) < len(table.columns) else ""
        body.append(f"<tr{failed}>{''.join(cells)}</tr>")
    legend = "".join(f"<dt>{esc(c.header)}</dt><dd>{esc(c.explanation)}</dd>" for c in table.columns)
    return (
        f"<table class='data'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n"
        f"<dl class='legend'>{legend}</dl>"
    )


def _figure_html(figure: Figure) -> str:
    esc = html.escape
    data = base64.b64encode(figure.png).decode()
    return (
        f"<h3>{esc(figure.title)}</h3>\n<figure><img alt='{esc(figure.title)}' "
        f"src='data:image/png;base64,{data}'><figcaption>{esc(figure.caption)}</figcaption></figure>"
    )


def render_html(report: Report) -> str:
    esc = html.escape
    figures = {name: _figure_html(figure) for name, figure in report.figures.items()}
    failed = [name for name, record in report.records.items() if not record.get("ok")]
    failed_note = (
        f" <strong>{len(failed)} of {len(report.records)} backends failed</strong> "
        f"({esc(', '.join(failed))}): their rows show the error."
        if failed
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>paramparity: training the tied MLP</title>
<style>{STYLE}</style>
</head><body>
<h1>Training the tied MLP (D2L 6.2 exercises)</h1>
<p>Every backend trains the book's tied MLP ({esc(SHARED)}: one Dense(8) used twice) with its own
framework's SGD: learning rate {report.lr:g}, {report.steps} full-batch steps on {N_SAMPLES} samples of a
seeded synthetic regression task. All start from the same seeded weights; the untied baseline starts from
the same values copied into both positions, so both models begin as the same function. The float64 numpy
oracle runs the same training as the reference.{failed_note}</p>

<h2>Does every backend train like the numpy oracle?</h2>
<p>One row per backend; the legend under the table explains each column.</p>
{_table_html(report.parity)}
{figures.get("train_loss.png", "")}

<h2>Watching every layer</h2>
{figures.get("train_grad_norms.png", "")}

<h2>Why is sharing a good idea?</h2>
<p>What the tie saves:</p>
{_table_html(report.budget)}
<p>What it costs or gains in fit, for each run's final parameters:</p>
{_table_html(report.sharing)}
{figures.get("train_sharing.png", "")}
<p class="conclusion"><strong>Conclusion.</strong> {esc(report.conclusion)}</p>
</body></html>
"""


def render_text(report: Report, width: int = 100) -> str:
    def table(t: Table) -> str:
        rows = [row for row in t.rows if len(row) == len(t.columns)]
        return format_table(t.headers, rows, max_width=13)

    failed = [
        textwrap.fill(f"{row[0]} {row[1]}", width, subsequent_indent="  ")
        for row in report.parity.rows
        if len(row) < len(report.parity.columns)
    ]
    return "\n".join(
        [
            f"Tied MLP, SGD lr={report.lr:g}, {report.steps} steps: every backend against the numpy oracle",
            table(report.parity),
            *failed,
            "",
            "Why is sharing a good idea?",
            table(report.budget),
            "",
            table(report.sharing),
            "",
            textwrap.fill("Conclusion. " + report.conclusion, width),
        ]
    )


# -- the command -------------------------------------------------------------------------------------------
def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train the tied MLP in every backend; write reports/train.html",
        description="Train the tied MLP and its untied baseline with each framework's "
        "SGD, from identical seeded weights; compare with the numpy oracle, plot and summarize.",
    )
    add_backends_option(parser)
    add_timeout_option(parser)
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"SGD steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"learning rate (default {DEFAULT_LR})")
    parser.add_argument("--out-dir", type=Path, default=REPORTS, help="where reports go (default: reports/)")
    parser.set_defaults(run=run_train)


def run_training(backends: Sequence[str], command, timeout: float, console=None) -> dict[str, Record]:
    """Every backend's record. Progress: on a terminal, one live line per backend (elapsed time,
    then its final state); otherwise plain lines, at most one per backend per tenth of its steps."""
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
    from common.errors import UsageError

    if args.steps < 1 or not args.lr > 0:
        raise UsageError(f"--steps={args.steps} and --lr={args.lr}, but should be >= 1 and > 0")
    backends = parse_backend_list(args.backends)
    out = writable_folder(args.out_dir, "--out-dir")  # before the training, not after
    prepare_envs(backends)
    command = module_command("common.commands.training", "--steps", str(args.steps), "--lr", str(args.lr))
    records = run_training(backends, command, args.timeout)
    report = build_report(records, args.steps, args.lr)
    for name, figure in report.figures.items():
        write_output(out / name, figure.png)
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
