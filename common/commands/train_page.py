"""train.html, the page of `make train`: the verdict first, each backend against the oracle,
every layer of every backend as small multiples over the oracle's curves, and "why share" with
its intervals. It renders a ``train_report.Report``; the numbers and words are computed there.

One self-contained page: inline SVG charts (``common.commands.svgplot``) on a CSS grid that
reflows, two panels a row on a 480 px screen, so no chart is a raster shrunk past reading.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

from common.commands.svgplot import (
    IntervalChart,
    IntervalRow,
    Panel,
    Series,
    render_intervals,
    render_panel,
    y_limits,
)
from common.commands.train_report import (
    CONFIDENCE,
    LOSS_PARITY_RTOL,
    ORACLE,
    SAME,
    Reference,
    Report,
    Table,
    _e,
    _worst,
    describe_conventions,
    deviation,
    finished,
    percent,
)
from common.commands.training import N_SAMPLES

# -- the page ----------------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,sans-serif;line-height:1.45;max-width:1100px;margin:0 auto;padding:1em 2em;
  color:#1a1a1a}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{margin-bottom:.3em}
nav.contents{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:.4em 0;
  font-size:.92em;z-index:1}
nav.contents a{margin-right:.9em;white-space:nowrap}
table{border-collapse:collapse;margin:.6em 0 .3em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
td.error{overflow-wrap:anywhere}
th{background:#f0f0f0;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.failed td{color:#a40000}
dl.legend{display:grid;grid-template-columns:fit-content(30%) 1fr;gap:.15em 1em;font-size:.88em;
  color:#333;margin:.2em 0 1.6em}
dl.legend dt{font-weight:600;overflow-wrap:anywhere}dl.legend dd{margin:0}
.summary,p.conclusion{background:#f3f7ff;border-left:4px solid #3465a4;padding:.7em 1em}
.summary ul{margin:.2em 0;padding-left:1.2em}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:.8em 1.2em;
  margin:.5em 0 1em}
figure.panel{margin:0;min-width:0}
figure.panel figcaption{font-size:.85em;line-height:1.3;margin-bottom:.2em;overflow-wrap:anywhere}
figure.panel .note{color:#555;display:block}
figure.chart{margin:.6em 0 1.6em;max-width:560px}
figure.chart figcaption,p.caption{font-size:.9em;color:#333}
section.card{border-top:1px solid #eee;margin-top:1em}
svg.plot{width:100%;height:auto;display:block;overflow:visible}
svg.plot .frame{fill:none;stroke:#bbb}
svg.plot .grid{stroke:#eee}
svg.plot text{fill:#333}
svg.plot .s{fill:none;stroke-width:1.6;stroke-linejoin:round;vector-effect:non-scaling-stroke}
svg.plot .ref{stroke:#cfcfcf;stroke-width:6}
.w{stroke:#1f77b4;border-color:#1f77b4}.b{stroke:#ff7f0e;border-color:#ff7f0e}
.rmean{stroke:#2ca02c;border-color:#2ca02c}.rvar{stroke:#9467bd;border-color:#9467bd}
.sum{stroke:#111;border-color:#111}.use1{stroke:#d62728;border-color:#d62728;stroke-dasharray:5 3}
.use2{stroke:#17becf;border-color:#17becf;stroke-dasharray:2 3}
.use3{stroke:#8c564b;border-color:#8c564b;stroke-dasharray:8 3}
.dev{stroke:#1f77b4;border-color:#1f77b4}.seedline{stroke:#9a9a9a;border-color:#9a9a9a}
svg.plot .seedline{stroke-width:1}.avg{stroke:#111;border-color:#111}svg.plot .avg{stroke-width:2.2}
svg.plot .rule{stroke:#d62728;stroke-dasharray:5 4;vector-effect:non-scaling-stroke}
.ref{border-color:#cfcfcf}
svg.intervals .band{fill:#e8f3e8}svg.intervals .zero{stroke:#666}svg.intervals .grid{stroke:#e4e4e4}
svg.intervals .interval{stroke:#1f4e8c;stroke-width:2.5}svg.intervals circle.mean{fill:#1f4e8c}
svg.intervals .seed{stroke:#888}
.key{display:inline-block;width:1.8em;border-top-width:3px;border-top-style:solid;vertical-align:middle;
  margin:0 .3em 0 .8em}
.key.ref{border-top-width:7px}.key.use1,.key.use2{border-top-style:dashed}
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

KEYS = {
    "ref": "the numpy oracle (under this backend's conventions), beneath",
    "w": "weight (a BatchNorm's scale \u03b3)",
    "b": "bias (a BatchNorm's shift \u03b2)",
    "sum": "the gradient applied to a shared layer",
    "use1": "its first use's own gradient",
    "use2": "its second use's",
    "rmean": "running mean",
    "rvar": "running variance",
}


def _keys(styles: Sequence[str]) -> str:
    return (
        "<p class='keys'>"
        + "".join(f"<span class='key {style}'></span>{html.escape(KEYS[style])}" for style in styles)
        + "</p>"
    )


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


def deviation_panels(report: Report) -> list[Panel]:
    """One small panel per finished backend: its watched loss's relative deviation from the
    oracle's at every step, all on one log scale (a gap is a step where they are exactly equal)."""
    panels = []
    for name, record in finished(report.records).items():
        values = deviation(record["watched"]["losses"], report.reference_of(name).watched.losses)
        worst = _worst(values)
        note = f"max {_e(worst)}" if worst > 0 else "identical at every step"
        shown_values = [v if v > 0 else math.nan for v in values]
        panels.append(
            Panel(name, (Series("|loss - oracle| / oracle", shown_values, "dev"),), log=True, note=note,
                  rules=((LOSS_PARITY_RTOL, f"the suite's tolerance, {LOSS_PARITY_RTOL:g}"),))
        )  # fmt: skip
    shared = y_limits(panels)
    return [Panel(p.title, p.series, p.log, p.note, p.rules, shared) for p in panels]


def sharing_panels(report: Report, reference: Reference) -> list[Panel]:
    """The oracle's seeds, step by step: (tied - untied) / untied in %, one grey line per seed and
    their mean in black, on held-out and on training data."""

    def relative(a: Sequence[float], b: Sequence[float]) -> list[float]:
        return [100 * (x / y - 1) for x, y in zip(a, b, strict=False)]

    panels = []
    for what, key in (("held-out", "held_out_losses"), ("training", "losses")):
        curves = [relative(getattr(run.tied, key), getattr(run.untied, key)) for run in reference.seeds]
        mean = [float(np.mean(column)) for column in zip(*curves, strict=True)] if curves else []
        series = tuple(
            Series(f"seed {run.seed}", c, "seedline") for run, c in zip(reference.seeds, curves, strict=True)
        )
        panels.append(
            Panel(
                f"{what} loss, tied vs untied (%)",
                (*series, Series(f"mean of {len(curves)} seeds", mean, "avg")),
                note="below 0: tied better",
                rules=((0.0, "no difference"),),
            )
        )
    return panels


def interval_chart(report: Report) -> IntervalChart:
    rows = tuple(
        IntervalRow(name, 100 * s.held_out.mean, 100 * s.held_out.low, 100 * s.held_out.high,
                    tuple(100 * v for v in s.held_out.values))
        for name, s in report.sharing.items()
    )  # fmt: skip
    return IntervalChart(
        f"held-out loss, tied vs untied: mean and {CONFIDENCE} interval over {report.seeds} seeds",
        rows,
        band=(-100 * SAME, 100 * SAME),
    )


def _panels_html(panels: Sequence[Panel]) -> str:
    return "<div class='panels'>" + "".join(render_panel(p) for p in panels) + "</div>"


def _anchor(name: str) -> str:
    return "layers-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def render_html(report: Report) -> str:
    esc = html.escape
    spec = report.spec
    ok = finished(report.records)
    failed = [name for name in report.records if name not in ok]
    cards = report.cards
    nav = [("summary", "In short"), ("parity", "Against the oracle"), ("layers", "Every layer")]
    if spec.ties:
        nav.append(("sharing", "Why share"))
    contents = " ".join(f"<a href='#{a}'>{esc(t)}</a>" for a, t in nav)
    backends_nav = " ".join(f"<a href='#{_anchor(n)}'>{esc(n)}</a>" for n in cards)
    styles = ["ref", "w", "b"]
    if spec.ties:
        styles += ["sum", "use1", "use2"]
    if spec.state:
        styles += ["rmean", "rvar"]
    card_html = []
    for name, (panels, worst) in cards.items():
        card_html.append(
            f"<section class='card' id='{_anchor(name)}'><h3>{esc(name)}</h3>"
            f"<p class='caption'>Largest deviation of any curve from the oracle's: {_e(worst)} of the "
            f"largest value in its panel.</p>{_panels_html(panels)}</section>"
        )
    if failed:
        card_html.append(f"<p>Not drawn, because they failed: {esc(', '.join(failed))}.</p>")
    conventions = ""
    if spec.has_batchnorm and report.conventions:
        conventions = (
            " Each backend's oracle follows its declared BatchNorm conventions: "
            + "; ".join(
                f"{', '.join(n for n, c in report.conventions.items() if c == ref.conventions)}: "
                f"{describe_conventions(ref.conventions)}"
                for ref in report.references.values()
            )
            + "."
        )
    sharing = ""
    if spec.ties:
        charts = "".join(
            f"<h3>Seed by seed ({esc(report.reference_label(reference))})</h3>"
            + _panels_html(sharing_panels(report, reference))
            for reference in report.references.values()
        )
        sharing = f"""
<section id="sharing"><h2>Why is sharing a good idea?</h2>
<p>What the tie saves:</p>
{_table_html(report.budget)}
<p>What it costs or gains in fit, over {report.seeds} seeds of the initial weights. Each seed starts
the tied model and the untied one as the same function (its weights copied into both positions), so
a seed's difference is the tie's effect alone, and the seeds say how much that effect varies:</p>
{_table_html(report.sharing_table)}
<figure class="chart">{render_intervals(interval_chart(report))}<figcaption>Each row: the
geometric mean (dot) and the {CONFIDENCE} interval (bar) of the held-out difference, with each
seed's value as a tick; the shaded band is +-{percent(SAME)}, "about the same". Every backend ran
its own seeds with its framework's SGD.</figcaption></figure>
<p>The {ORACLE}'s seeds, one by one:</p>
{_table_html(report.seeds_table)}
{charts}
<p class="caption">Grey: each seed's (tied - untied) / untied at every step; black: their mean.</p>
<p class="conclusion"><strong>Conclusion.</strong> {esc(report.conclusion)}</p>
</section>"""
    summary = "".join(f"<li>{esc(line)}</li>" for line in report.summary)
    what = (
        f"the untied baseline (the same values copied into every position, so both begin as the same "
        f"function) over {report.seeds} seeds"
        if spec.ties
        else "no baseline (the model has no tie)"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>paramparity: training {esc(spec.name)}</title>
<style>{STYLE}</style>
</head><body>
<nav class="contents">{contents}</nav>
<h1>Training {esc(spec.name)} (D2L 6.2 exercises)</h1>
<p>Every backend trains the model {esc(spec.name)} with its own framework's SGD: learning rate
{report.lr:g}, {report.steps} full-batch steps on {N_SAMPLES} samples of a seeded synthetic regression
task, from the same seeded weights, watching every layer at every step; and {what}. The float64
numpy oracle runs the same training as the reference.{esc(conventions)}</p>
<section id="summary" class="summary"><strong>In short.</strong><ul>{summary}</ul></section>

<section id="parity"><h2>Does every backend train like the numpy oracle?</h2>
<p>One row per backend; the legend under the table explains each column.</p>
{_table_html(report.parity)}
<h3>Each backend's loss against the oracle's</h3>
{_panels_html(deviation_panels(report))}
<p class="caption">|loss - oracle| / oracle at every step of the watched run, one panel per backend on
one log scale; the dashed line is the conformance suite's tolerance ({LOSS_PARITY_RTOL:g}); a gap is
a step where the two are exactly equal.</p>
</section>

<section id="layers"><h2>Watching every layer</h2>
<p>Every layer with parameters, for every backend: the norm of its parameters, of the gradient SGD
applied to them{", each use's own gradient for a shared layer" if spec.ties else ""}{
        ", and a BatchNorm's running statistics" if spec.state else ""
    }, read before each step.
Each curve is drawn over the oracle's, which it should hide.</p>
{_keys(styles)}
<p>Backends: {backends_nav}</p>
{"".join(card_html)}
</section>
{sharing}
</body></html>
"""
