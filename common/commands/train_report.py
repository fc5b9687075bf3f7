"""`make train`: every backend trains a model (the tied MLP by default; ``--model`` picks another,
such as one with BatchNorm) in its own env, in parallel. This process, in the base env, compares
each run with the numpy oracle under that backend's declared BatchNorm conventions, draws every
layer of every backend beside the oracle's, and, for a model with a tie, answers "why is sharing
a good idea?" over several seeds, with an interval.

It imports no framework. This module computes the numbers, the tables (each column with its
explanation), the charts as data and the words: the conclusion is written by code from the
measured numbers, with their uncertainty, so it says whatever this run found. ``train_page``
renders them as HTML, ``render_text`` for the terminal.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.commands.svgplot import (
    Panel,
    Series,
)
from common.commands.textable import format_table
from common.commands.training import (
    DEFAULT_MODEL,
    DEFAULT_SEEDS,
    HELD_OUT_SAMPLES,
    MODELS,
    N_SAMPLES,
    NO_CONVENTIONS,
    SeedRun,
    Step,
    TrainRun,
    baseline_start,
    mse,
    oracle_run,
    parameter_budget,
    regression_data,
)
from common.core.oracle import Conventions
from common.core.spec import ModelSpec, NormSlot, layer_name, param_name
from common.envs import ROOT

REPORTS = ROOT / "reports"
Record = Mapping[str, Any]
LOSS_PARITY_STEPS = 50  # the conformance suite holds these steps to the oracle
LOSS_PARITY_RTOL = 1e-5
SAME = 1e-3  # relative differences within this read as "about the same"
ORACLE = "numpy oracle"
CONFIDENCE = "95%"
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (any statistics table).
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom; past the table,
    the normal quantile with the first Cornish-Fisher term (within 0.001 of the exact value)."""
    if df < 1:
        raise ValueError(f"df={df}, but should be >= 1")
    return T_95[df - 1] if df <= len(T_95) else 1.96 + (1.96**3 + 1.96) / (4 * df)


@dataclass(frozen=True)
class Interval:
    """The mean of per-seed values and its 95% t-interval: seeds are independent draws of the
    initial weights, the same for both models, so the paired differences are what varies."""

    mean: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval:
        values = tuple(float(v) for v in values)
        if len(values) < 2:
            raise ValueError(f"{len(values)} values, but an interval needs at least 2")
        mean = float(np.mean(values))
        half = t_quantile(len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
        return cls(mean, mean - half, mean + half, values)

    @classmethod
    def of_ratios(cls, ratios: Sequence[float]) -> Interval:
        """For per-seed ratios tied / untied, as relative changes (ratio - 1): the t-interval of
        their logarithms, mapped back. A loss ratio is multiplicative, so this interval never
        reaches below -100%, and for small changes it is the plain t-interval."""
        logs = cls.of([math.log(r) if r > 0 else math.nan for r in ratios])
        return cls(
            math.expm1(logs.mean),
            math.expm1(logs.low),
            math.expm1(logs.high),
            tuple(float(r) - 1.0 for r in ratios),
        )

    @property
    def verdict(self) -> str:
        """For (tied - untied) / untied: "same" if the whole interval is within +-SAME, "tied" if it
        is below 0 (tied better), "untied" if above, else "unclear" (it holds 0, or a run diverged)."""
        if not all(math.isfinite(v) for v in (self.low, self.high)):
            return "unclear"
        if -SAME <= self.low and self.high <= SAME:
            return "same"
        if self.high < 0:
            return "tied"
        if self.low > 0:
            return "untied"
        return "unclear"


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
    """Losses of one seed's final parameters (and running statistics), evaluated by the float64
    numpy oracle in inference mode."""

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


@dataclass(frozen=True)
class Sharing:
    """One run's answer to "why share", over every seed: a Fit per seed, and the intervals of the
    relative differences (tied - untied) / untied (``Interval.of_ratios``)."""

    fits: tuple[Fit, ...]

    @property
    def held_out(self) -> Interval:
        return Interval.of_ratios([fit.held_out_tied / fit.held_out_untied for fit in self.fits])

    @property
    def train(self) -> Interval:
        return Interval.of_ratios([fit.train_tied / fit.train_untied for fit in self.fits])


@dataclass
class Data:
    """The training set and the held-out set of a spec."""

    x: np.ndarray
    y: np.ndarray
    held_x: np.ndarray
    held_y: np.ndarray

    @classmethod
    def of(cls, spec: ModelSpec) -> Data:
        return cls(*regression_data(spec), *regression_data(spec, held_out=HELD_OUT_SAMPLES))

    def fit(self, spec: ModelSpec, tied: Mapping[str, Any], untied: Mapping[str, Any], conventions) -> Fit:
        """``tied`` and ``untied``: final_params and final_state of a run of each."""

        def loss(model: ModelSpec, run: Mapping[str, Any], x, y) -> float:
            return mse(model, run["final_params"], x, y, run.get("final_state") or None, conventions)

        untied_spec = spec.untied()
        return Fit(
            loss(spec, tied, self.x, self.y),
            loss(untied_spec, untied, self.x, self.y),
            loss(spec, tied, self.held_x, self.held_y),
            loss(untied_spec, untied, self.held_x, self.held_y),
        )


@dataclass
class Reference:
    """The numpy oracle's runs under one set of BatchNorm conventions: the watched run (seed 0)
    and, for a model with a tie, every seed of tied against untied, with the held-out loss
    measured at every step."""

    conventions: Conventions
    watched: TrainRun
    seeds: list[SeedRun]
    sharing: Sharing | None

    @classmethod
    def compute(
        cls, spec: ModelSpec, steps: int, lr: float, seeds: int, conventions: Conventions
    ) -> Reference:
        data = Data.of(spec)
        watched = oracle_run(spec, baseline_start(spec)[0], steps, lr, conventions=conventions)
        runs = []
        for seed in range(seeds if spec.ties else 0):
            starts = baseline_start(spec, seed)
            tied, untied = (
                oracle_run(
                    kind,
                    start,
                    steps,
                    lr,
                    watch=False,
                    held_out=(data.held_x, data.held_y),
                    conventions=conventions,
                )
                for kind, start in zip((spec, spec.untied()), starts, strict=True)
            )
            runs.append(SeedRun(seed, tied, untied))
        sharing = None
        if runs:
            fits = [data.fit(spec, _as_record(run.tied), _as_record(run.untied), conventions) for run in runs]
            sharing = Sharing(tuple(fits))
        return cls(conventions, watched, runs, sharing)


def _as_record(run: TrainRun) -> dict[str, Any]:
    return {"final_params": run.final_params, "final_state": run.final_state}


def conventions_for(spec: ModelSpec, backend: str) -> Conventions:
    """The BatchNorm conventions ``backend`` declares, which the oracle follows for it; a spec
    without BatchNorm does not depend on them, so every backend shares one reference."""
    if not spec.has_batchnorm:
        return NO_CONVENTIONS
    from common.core.expectations import conventions_of
    from common.declarations import declaration

    return conventions_of(declaration(backend).facts)


def describe_conventions(conventions: Conventions) -> str:
    variance = "unbiased" if conventions.unbiased_running_var else "biased"
    return (
        f"momentum {conventions.momentum:g}, eps {conventions.eps:g}, {variance} running variance, "
        f"a frozen BatchNorm in {conventions.frozen_batchnorm} mode"
    )


@dataclass
class Report:
    """What `make train` found; ``build_report`` fills the derived fields in order."""

    spec: ModelSpec
    steps: int
    lr: float
    seeds: int
    records: Mapping[str, Record]
    references: dict[Conventions, Reference]
    conventions: dict[str, Conventions]  # each finished backend's
    cards: dict[str, tuple[list[Panel], float]] = field(default_factory=dict)  # layer panels, worst
    deviations: dict[str, Deviations] = field(default_factory=dict)  # each finished backend's
    sharing: dict[str, Sharing] = field(default_factory=dict)  # each reference (by label), each backend
    parity: Table = field(default_factory=lambda: Table((), []))
    budget: Table | None = None  # these four: a model with a tie only
    sharing_table: Table | None = None
    seeds_table: Table | None = None
    conclusion: str = ""
    summary: list[str] = field(default_factory=list)

    def reference_of(self, backend: str) -> Reference:
        return self.references[self.conventions[backend]]

    def reference_label(self, reference: Reference) -> str:
        """ "numpy oracle", or with several sets of conventions, whose they are."""
        if len(self.references) == 1:
            return ORACLE
        users = [name for name, c in self.conventions.items() if c == reference.conventions]
        return f"{ORACLE} ({', '.join(users)})"


def finished(records: Mapping[str, Record]) -> dict[str, Record]:
    return {name: record for name, record in records.items() if record.get("ok")}


def _worst(values: Sequence[float]) -> float:
    """The largest value; nan if any is nan (a diverged run), nan for none."""
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values, default=math.nan)


def deviation(losses: Sequence[float], reference: Sequence[float]) -> list[float]:
    """|loss - oracle| / oracle at every step the two runs share."""
    return [abs(a - b) / abs(b) if b else math.nan for a, b in zip(losses, reference, strict=False)]


def curve_deviation(curve: Sequence[float], reference: Sequence[float], scale: float) -> float:
    """max |curve - reference| over the steps, relative to ``scale``, the largest value of its
    chart: how far apart two drawn curves are at the chart's scale. A gradient that is exactly 0 in
    theory (a Dense bias before a BatchNorm), or one that shrinks toward 0 as a layer fits, is
    rounding noise in both runs, and relative to itself its error would be meaningless."""
    pairs = list(zip(curve, reference, strict=False))
    if not pairs:
        return math.nan
    if any(math.isnan(a) for a, _ in pairs):
        return math.nan
    return max(abs(a - b) for a, b in pairs) / (scale or 1.0)


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


def signed(fraction: float) -> str:
    """-0.0071 -> "-0.71%", 0.018 -> "+1.8%"."""
    if math.isnan(fraction):
        return "nan%"
    return ("-" if fraction < 0 else "+") + percent(fraction)


def interval_text(interval: Interval) -> str:
    return (
        f"{signed(interval.mean)} ({CONFIDENCE} interval {signed(interval.low)} to {signed(interval.high)})"
    )


# -- what every watched curve of a record is ---------------------------------------------------------
def _series(history: Sequence[Mapping[str, Any]] | Sequence[Step], key: str, name: str) -> list[float]:
    """One watched quantity over the steps: ``key`` (param_norms, grad_norms...) at ``name``."""
    out = []
    for step in history:
        values = step.get(key, {}) if isinstance(step, Mapping) else getattr(step, key)
        out.append(float(values.get(name, math.nan)))
    return out


@dataclass(frozen=True)
class Curve:
    """One watched quantity of one layer: what a chart draws, with the oracle's beneath it."""

    key: str  # param_norms, grad_norms, contribution_norms or state_norms
    name: str  # the position read: layers.2.weight, layers.1.running_mean
    label: str
    style: str


@dataclass(frozen=True)
class LayerChart:
    title: str
    note: str
    curves: tuple[Curve, ...]
    log: bool = False


def layer_charts(spec: ModelSpec, conventions: Conventions) -> list[LayerChart]:
    """Every layer with parameters, in execution order: its parameter norms, its applied
    gradient's norms (unless frozen), each use's gradient (where shared) and, for a BatchNorm,
    its running statistics read through each position."""
    charts = []
    for slot in spec.layer_slots:
        if slot.tied:
            continue
        owner = slot.path
        users = [s.path for s in spec.layer_slots if s.owner == owner]
        name = " = ".join(layer_name(path) for path in users)
        is_norm = isinstance(slot, NormSlot)
        kind = "BatchNorm" if is_norm else f"Dense({slot.units})"
        trainable = spec.trainable_at(owner)
        frozen = "" if trainable else ", frozen"
        roles = (
            ("weight", "scale \u03b3" if is_norm else "weight", "w"),
            ("bias", "shift \u03b2" if is_norm else "bias", "b"),
        )
        title = f"{name} {kind}{frozen}"
        charts.append(
            LayerChart(
                f"{title}: parameter norm",
                "no update while frozen" if not trainable else "",
                tuple(
                    Curve("param_norms", param_name(owner, role), label, style)
                    for role, label, style in roles
                ),
            )
        )
        if trainable:
            charts.append(
                LayerChart(
                    f"{title}: gradient norm",
                    "",
                    tuple(
                        Curve("grad_norms", param_name(owner, role), label, style)
                        for role, label, style in roles
                    ),
                    log=True,
                )
            )
        if trainable and len(users) > 1:
            uses = tuple(
                Curve(
                    "contribution_norms", param_name(path, "weight"), f"use at {layer_name(path)}", f"use{k}"
                )
                for k, path in enumerate(users, 1)
            )
            charts.append(
                LayerChart(
                    f"{name}: each use's {'scale' if is_norm else 'weight'} gradient",
                    "the applied one is their sum",
                    (Curve("grad_norms", param_name(owner, "weight"), "applied (sum)", "sum"), *uses),
                    log=True,
                )
            )
        if is_norm:
            statistics = conventions.frozen_batchnorm == "training" or trainable
            note = "" if trainable else f"frozen: {'updated' if statistics else 'not updated'}, as declared"
            curves = tuple(
                Curve(
                    "state_norms",
                    param_name(path, role),
                    f"{label} at {layer_name(path)}" if len(users) > 1 else label,
                    style,
                )
                for path in users[:1]
                for role, label, style in (
                    ("running_mean", "running mean", "rmean"),
                    ("running_var", "running variance", "rvar"),
                )
            )
            charts.append(LayerChart(f"{title}: running statistics (norm)", note, curves))
    return charts


def chart_panels(
    charts: Sequence[LayerChart], history: Sequence[Mapping[str, Any]], reference: Sequence[Step]
) -> tuple[list[Panel], float]:
    """The panels of one backend's card, each curve over the oracle's, and the largest
    deviation of any curve from the oracle's (``curve_deviation``)."""
    panels, worst = [], []
    for chart in charts:
        pairs = [(_series(history, c.key, c.name), _series(reference, c.key, c.name)) for c in chart.curves]
        scale = max((abs(v) for _, theirs in pairs for v in theirs if math.isfinite(v)), default=0.0)
        series, gaps = [], []
        for curve, (mine, theirs) in zip(chart.curves, pairs, strict=True):
            series.insert(0, Series(f"{ORACLE}: {curve.label}", theirs, "ref"))  # beneath
            series.append(Series(curve.label, mine, curve.style))
            gaps.append(curve_deviation(mine, theirs, scale))
        worst.extend(gaps)
        note = f"max deviation {_e(_worst(gaps))}"
        panels.append(
            Panel(chart.title, tuple(series), chart.log, "; ".join(filter(None, (chart.note, note))))
        )
    return panels, _worst(worst)


def layer_cards(report: Report) -> dict[str, tuple[list[Panel], float]]:
    """Every finished backend's panels, one per chart of ``layer_charts``, and its worst deviation."""
    cards = {}
    for name, record in finished(report.records).items():
        reference = report.reference_of(name)
        charts = layer_charts(report.spec, reference.conventions)
        cards[name] = chart_panels(charts, record["watched"]["history"], reference.watched.steps)
    return cards


# -- the tables ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deviations:
    """How far one backend's runs are from the oracle's (nan: a run diverged, or none was made)."""

    loss: float  # the watched run's loss, relative, worst step
    seeds: float  # every seed run's loss, relative, worst step of any
    curves: float  # every watched curve, relative to its largest value (``curve_deviation``)


def deviations(record: Record, reference: Reference, curves: float) -> Deviations:
    seeds = [
        value
        for mine, theirs in zip(record.get("seed_runs", []), reference.seeds, strict=False)
        for kind in ("tied", "untied")
        for value in deviation(mine[kind]["losses"], getattr(theirs, kind).losses)
    ]
    return Deviations(
        _worst(deviation(record["watched"]["losses"], reference.watched.losses)), _worst(seeds), curves
    )


def parity_table(report: Report) -> Table:
    spec, steps = report.spec, report.steps
    tie, state = bool(spec.ties), bool(spec.state)
    columns = [
        Column(
            "backend", "the backend's name (backends/<name>/backend.toml); a failed backend shows its error"
        ),
        Column("framework", "the framework version the backend ran"),
        Column(
            "loss deviation",
            f"the largest |loss_backend - loss_oracle| / loss_oracle over all {steps} SGD steps of the "
            "watched run (seed 0). The oracle is float64 numpy under this backend's declared BatchNorm "
            "conventions, the backend float32, so about 1e-7 is rounding; the conformance suite holds "
            f"the first {LOSS_PARITY_STEPS} steps of the tied MLP to {LOSS_PARITY_RTOL:g}",
            numeric=True,
        ),
    ]
    if tie:
        columns.append(
            Column(
                "seed runs' loss deviation",
                f"the same over every step of all {report.seeds} seeds, tied and untied, trained on the "
                "framework's fast path (its compiled training loop), against the oracle's same seeds",
                numeric=True,
            )
        )
    columns.append(
        Column(
            "watched-curve deviation",
            "the largest distance of any curve in 'Watching every layer' from the oracle's curve beneath it, "
            "relative to the largest value in its panel: parameter and gradient norms"
            + (", each use's gradient" if tie else "")
            + (", running statistics" if state else ""),
            numeric=True,
        )
    )
    if tie:
        columns += [
            Column(
                "sum of uses - applied",
                "the largest |g(first use) + g(second use) - g(applied)| over every step and element: the "
                "gradient the optimizer applied to the shared layer against the sum of its uses, each "
                "computed separately by the same framework. 0 means the framework sums the uses exactly",
                numeric=True,
            ),
            Column(
                "tie held",
                "yes if every tied position read the same values (parameters and running statistics) "
                "after every step: the tie survived training",
            ),
        ]
    columns.append(
        Column(
            "tensors listed",
            "parameter tensors the framework's own listing shows"
            + (
                ", tied / untied: fewer for the tied model means it lists the shared layer once"
                if tie
                else ""
            ),
        )
    )
    if state:
        columns.append(
            Column(
                "state listed",
                "running-statistics tensors the framework's state listing shows, apart from them",
            )
        )
    columns.append(
        Column("time", "the child's wall time for all its runs, after importing the framework", numeric=True)
    )
    rows = []
    for name, record in report.records.items():
        if not record.get("ok"):
            rows.append([name, f"FAILED: {record.get('error', 'no error message')}"])
            continue
        numbers, listed = report.deviations[name], record.get("listed", {})
        row = [name, str(record.get("versions", {}).get("framework", "?")), _e(numbers.loss)]
        if tie:
            row.append(_e(numbers.seeds))
        row.append(_e(numbers.curves))
        if tie:
            checks = record["checks"]
            row += [
                _e(checks["max_sum_minus_applied"]),
                "yes" if checks["tied_positions_equal_every_step"] else "NO",
            ]
        row.append(
            " / ".join(
                str(listed.get(kind, {}).get("params", "?")) for kind in ("model", "untied")[: 1 + tie]
            )
        )
        if state:
            row.append(str(listed.get("model", {}).get("state", "?")))
        seconds = record.get("timing", {}).get("seconds")
        row.append("?" if seconds is None else f"{seconds:.1f}s")
        rows.append(row)
    return Table(columns, rows)


def budget_table(spec: ModelSpec) -> Table:
    tied, untied = parameter_budget(spec), parameter_budget(spec.untied())
    columns = (
        Column(
            "model",
            f"tied: {spec.name}, one layer used at {_tie_text(spec)}; untied: the same network with its own "
            "layer at each position",
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


def _tie_text(spec: ModelSpec) -> str:
    return "; ".join(" and ".join(layer_name(path) for path in group) for group in spec.ties)


VERDICT_WORDS = {
    "tied": "tied better",
    "untied": "untied better",
    "same": f"the same (within {percent(SAME)})",
    "unclear": "cannot tell",
}


def sharing_table(report: Report) -> Table:
    n = report.seeds
    columns = (
        Column(
            "run",
            f"whose final parameters: the {ORACLE} (float64), or a backend's own SGD on its fast path, "
            f"seeds 0 to {n - 1} each",
        ),
        Column(
            "held-out, tied vs untied",
            f"(held-out loss tied - untied) / untied, the mean over {n} seeds: negative means the tied model "
            f"predicts the {HELD_OUT_SAMPLES} unseen inputs better",
            numeric=True,
        ),
        Column(
            f"{CONFIDENCE} interval",
            f"where the mean lies with {CONFIDENCE} confidence: Student's t over the {n} per-seed "
            "differences (each seed starts both models from the same weights)",
            numeric=True,
        ),
        Column("training, tied vs untied", f"the same on the {N_SAMPLES} training samples", numeric=True),
        Column(f"{CONFIDENCE} interval, training", "its interval", numeric=True),
        Column(
            "held-out verdict",
            f"tied or untied better when the whole interval lies on one side of 0; the same when it lies "
            f"within +-{percent(SAME)}; else cannot tell",
        ),
        Column(
            "largest seed difference from the oracle",
            "the largest |per-seed held-out difference - the oracle's for that seed|, in percentage points: "
            "how closely the framework's SGD reproduces the oracle's answer",
            numeric=True,
        ),
    )
    rows = []
    for name, sharing in report.sharing.items():
        held, train = sharing.held_out, sharing.train
        if name in report.conventions:
            theirs = report.reference_of(name).sharing.held_out.values
            gap = max(abs(a - b) for a, b in zip(held.values, theirs, strict=False)) * 100
            gap_text = f"{gap:.1e}"
        else:
            gap_text = "(reference)"
        rows.append(
            [
                name,
                signed(held.mean),
                f"{signed(held.low)} to {signed(held.high)}",
                signed(train.mean),
                f"{signed(train.low)} to {signed(train.high)}",
                VERDICT_WORDS[held.verdict],
                gap_text,
            ]
        )
    return Table(columns, rows)


def seeds_table(report: Report, reference: Reference) -> Table:
    columns = (
        Column(
            "seed", "the seed of the initial weights (the same values in both positions of the untied model)"
        ),
        Column(
            "training, tied",
            f"MSE of the final tied parameters on the {N_SAMPLES} training samples",
            numeric=True,
        ),
        Column("training, untied", "the same for the untied model", numeric=True),
        Column(
            "held-out, tied",
            f"MSE on {HELD_OUT_SAMPLES} held-out samples: new inputs, never trained on, labelled by the same "
            "hidden function as the training set",
            numeric=True,
        ),
        Column("held-out, untied", "the same for the untied model", numeric=True),
        Column(
            "held-out, tied vs untied",
            "(tied - untied) / untied: negative means tied is better",
            numeric=True,
        ),
    )
    rows = [
        [
            str(run.seed),
            _f(fit.train_tied),
            _f(fit.train_untied),
            _f(fit.held_out_tied),
            _f(fit.held_out_untied),
            signed(fit.held_out_change),
        ]
        for run, fit in zip(reference.seeds, reference.sharing.fits, strict=True)
    ]
    return Table(columns, rows)


# -- the words: a summary first, a conclusion from the numbers ----------------------------------------------
def verdict_sentence(interval: Interval, seeds: int, saved_scalars: int) -> str:
    """What the held-out interval says, and how sure it is."""
    verdict = interval.verdict
    if verdict == "same":
        return (
            f"The whole interval lies within +-{percent(SAME)}, so on unseen data the tie costs nothing "
            f"that matters, and the {saved_scalars} saved scalars come free."
        )
    if verdict == "tied":
        return (
            "The whole interval lies below 0, so sharing generalizes better here: the tie is a constraint "
            f"that pays on unseen data, on top of {saved_scalars} fewer scalars to store and train."
        )
    if verdict == "untied":
        return (
            f"The whole interval lies above 0, so the untied model's {saved_scalars} extra scalars buy a "
            "lower held-out loss: here sharing pays off in size only, which is worth it where memory matters "
            "more than that difference, or where both positions should compute the same function."
        )
    spread = max(abs(interval.low - interval.mean), abs(interval.high - interval.mean))
    return (
        f"The interval holds 0, so {seeds} seeds cannot tell which model predicts unseen data better: any "
        f"difference is within the spread between seeds (the interval reaches {percent(spread)} from the "
        f"mean). What sharing surely buys here is size, {saved_scalars} fewer scalars; what it costs or "
        "gains on unseen data, these seeds cannot say."
    )


def conclusion(report: Report) -> str:
    """The answer to "why is sharing a good idea?", in words, from this run's numbers."""
    spec = report.spec
    tied, untied = parameter_budget(spec), parameter_budget(spec.untied())
    saved = untied["scalars"] - tied["scalars"]
    text = [
        f"Tying saves {percent(saved / untied['scalars'])} of the parameters ({tied['scalars']} vs "
        f"{untied['scalars']} scalars, {tied['bytes']} vs {untied['bytes']} bytes as float32)."
    ]
    intro = (
        f"Over {report.seeds} seeds of the initial weights ({report.steps} SGD steps each, the {ORACLE} in "
        f"float64), the tied model's held-out loss on {HELD_OUT_SAMPLES} unseen inputs, relative to the "
        "untied model's, is"
    )
    references = list(report.references.values())
    if len(references) == 1:
        held, train = references[0].sharing.held_out, references[0].sharing.train
        per_seed = ", ".join(signed(v) for v in held.values)
        text.append(
            f"{intro} {interval_text(held)} on average (a geometric mean; per seed: {per_seed}); its "
            f"training loss {interval_text(train)}."
        )
        text.append(verdict_sentence(held, report.seeds, saved))
    else:  # a BatchNorm: the answer depends on each framework's conventions
        parts = [
            f"by the {report.reference_label(r)} with {describe_conventions(r.conventions)}, "
            f"{interval_text(r.sharing.held_out)}: {VERDICT_WORDS[r.sharing.held_out.verdict]}"
            for r in references
        ]
        text.append(
            f"{intro} on average, under each backend's BatchNorm conventions: " + "; ".join(parts) + "."
        )
        said = set()
        for r in references:
            if (verdict := r.sharing.held_out.verdict) not in said:
                said.add(verdict)
                sentence = verdict_sentence(r.sharing.held_out, report.seeds, saved)
                text.append(f"By the {report.reference_label(r)}: {sentence[0].lower()}{sentence[1:]}")
    backends = {name: s for name, s in report.sharing.items() if name in report.conventions}
    if backends:
        differ = {
            name: VERDICT_WORDS[s.held_out.verdict]
            for name, s in backends.items()
            if s.held_out.verdict != report.reference_of(name).sharing.held_out.verdict
        }
        if differ:
            text.append(
                "The backends' own seeds disagree with the oracle on: "
                + "; ".join(f"{name} ({word})" for name, word in differ.items())
                + "."
            )
        else:
            text.append(
                f"Every backend's own {report.seeds} seeds, trained with its framework's SGD, give the "
                f"same verdict ({', '.join(backends)})."
            )
        worst = _worst([r["checks"]["max_sum_minus_applied"] for r in finished(report.records).values()])
        text.append(
            "Both positions train the one shared layer: its applied gradient is the sum of the uses' "
            f"gradients (largest difference over every step and backend: {_e(worst)})."
        )
    else:
        text.append("No backend finished, so these are the numpy oracle's numbers alone.")
    return " ".join(text)


def summary(report: Report) -> list[str]:
    """The verdict first: who trained, how close to the oracle, and the answer over seeds."""
    ok = finished(report.records)
    failed = [name for name in report.records if name not in ok]
    lines = [
        f"{len(ok)} of {len(report.records)} backends trained {report.spec.name}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + "."
    ]
    if ok:
        loss = _worst([report.deviations[name].loss for name in ok])
        curves = _worst([report.deviations[name].curves for name in ok])
        watched = "parameters, gradients" + (" and running statistics" if report.spec.state else "")
        lines.append(
            f"Against the {ORACLE}: largest loss deviation {_e(loss)}, largest deviation of any watched "
            f"curve (every layer's {watched}) {_e(curves)}."
        )
    if report.spec.ties:
        for reference in report.references.values():
            held = reference.sharing.held_out
            whose = "" if len(report.references) == 1 else f" ({report.reference_label(reference)})"
            lines.append(
                f"Why share{whose}: held-out loss, tied vs untied, {interval_text(held)} over {report.seeds} "
                f"seeds: {VERDICT_WORDS[held.verdict]}."
            )
    return lines


# -- the report -------------------------------------------------------------------------------------------
def build_report(
    records: Mapping[str, Record],
    steps: int,
    lr: float,
    spec: ModelSpec | None = None,
    seeds: int = DEFAULT_SEEDS,
) -> Report:
    spec = spec or MODELS[DEFAULT_MODEL]
    records = {name: _checked(record, spec) for name, record in records.items()}
    conventions = {name: conventions_for(spec, name) for name in finished(records)}
    references = {}
    for each in dict.fromkeys(conventions.values()) or [NO_CONVENTIONS]:
        references[each] = Reference.compute(spec, steps, lr, seeds, each)
    report = Report(spec, steps, lr, seeds, records, references, conventions)
    report.cards = layer_cards(report)
    report.deviations = {
        name: deviations(record, report.reference_of(name), report.cards[name][1])
        for name, record in finished(records).items()
    }
    report.parity = parity_table(report)
    if spec.ties:
        data = Data.of(spec)
        report.sharing = {report.reference_label(r): r.sharing for r in references.values()}
        for name, record in finished(records).items():
            fits = [
                data.fit(spec, run["tied"], run["untied"], conventions[name]) for run in record["seed_runs"]
            ]
            report.sharing[name] = Sharing(tuple(fits))
        report.budget = budget_table(spec)
        report.sharing_table = sharing_table(report)
        report.seeds_table = seeds_table(report, next(iter(references.values())))
        report.conclusion = conclusion(report)
    report.summary = summary(report)
    return report


def _checked(record: Record, spec: ModelSpec) -> Record:
    """A finished record of another model, or one missing its seeds, cannot be compared: it
    becomes a failed one that says why."""
    if not record.get("ok"):
        return record
    if record.get("model") != spec.name:
        return {
            **record,
            "ok": False,
            "error": f"the record trained {record.get('model')!r}, not {spec.name!r}",
        }
    if spec.ties and len(record.get("seed_runs", [])) < 2:
        return {**record, "ok": False, "error": "the record holds fewer than 2 seed runs"}
    return record


def render_text(report: Report, width: int = 100) -> str:
    def table(t: Table) -> str:
        rows = [row for row in t.rows if len(row) == len(t.columns)]
        return format_table(t.headers, rows, max_width=13)

    failed = [
        textwrap.fill(f"{row[0]} {row[1]}", width, subsequent_indent="  ")
        for row in report.parity.rows
        if len(row) < len(report.parity.columns)
    ]
    lines = [textwrap.fill(line, width, subsequent_indent="  ") for line in report.summary]
    lines += [
        "",
        f"{report.spec.name}, SGD lr={report.lr:g}, {report.steps} steps: every backend against the {ORACLE}",
        table(report.parity),
        *failed,
    ]
    if report.spec.ties:
        lines += [
            "",
            "Why is sharing a good idea?",
            table(report.budget),
            "",
            table(report.sharing_table),
            "",
            textwrap.fill("Conclusion. " + report.conclusion, width),
        ]
    return "\n".join(lines)
