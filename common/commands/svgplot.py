"""Small charts as inline SVG, for a report that must stay legible on a phone.

A chart is data first (``Panel``, ``IntervalChart``), then text: a few kilobytes of vector paths
and real text, sized by the page's grid, which reflows. The viewBox is about as wide as the
narrowest grid cell, so its 12-unit text never renders much below 12 px. Colours come from the
page's stylesheet through each series' CSS class, so one legend on the page explains them all.
Standard library only: no framework, no plotting library.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 220, 140  # viewBox units; the page's grid cells are at least this many px wide
LEFT, RIGHT, TOP, BOTTOM = 42, 8, 8, 22  # the plot area's margins, room for the tick labels
FONT = 12
LOG_DECADES = 6  # a log axis spans at most this many decades below its top; smaller values sit on its floor


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]  # y at x = 0, 1, 2...; nan (or <= 0 on a log scale) leaves a gap
    style: str  # a CSS class of the page


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]
    log: bool = False
    note: str = ""  # a short line under the title: what to read off it
    rules: tuple[tuple[float, str], ...] = ()  # horizontal reference lines: (y, label)
    y_range: tuple[float, float] | None = None  # shared by small multiples that must compare
    x_label: str = "SGD step"


def drawable(values: Sequence[float], log: bool) -> list[float]:
    return [v for v in values if math.isfinite(v) and (v > 0 or not log)]


def y_limits(panels: Sequence[Panel]) -> tuple[float, float] | None:
    """One range covering every drawable value (and rule) of ``panels``: small multiples that
    share it compare at a glance. None if nothing is drawable."""
    log = any(panel.log for panel in panels)
    values = [v for p in panels for s in p.series for v in drawable(s.values, log)]
    values += [y for p in panels for y, _ in p.rules if not log or y > 0]
    return (min(values), max(values)) if values else None


def _nice(step: float) -> float:
    """The 1, 2 or 5 times a power of ten nearest above ``step``."""
    power = 10 ** math.floor(math.log10(step))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= step * 0.999)


def ticks(low: float, high: float, log: bool, count: int = 3) -> list[float]:
    """Tick values covering [low, high]; the axis runs from the first to the last."""
    if log:
        first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
        last = max(last, first + 1)
        every = max(1, math.ceil((last - first) / 4))  # at most about five decades labelled
        last = first + every * math.ceil((last - first) / every)
        return [10.0**k for k in range(first, last + 1, every)]
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = _nice((high - low) / count)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [k * step for k in range(first, last + 1)]


def tick_label(value: float, log: bool, step: float = 0.0) -> str:
    if value == 0:
        return "0"
    if log:
        exponent = round(math.log10(value))
        return f"{value:g}" if -2 <= exponent <= 3 else f"1e{exponent}"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    decimals = max(0, -math.floor(math.log10(step))) if step else 2
    return f"{value:.{decimals}f}"


def _points(values: Sequence[float], log: bool, x, y, buckets: int) -> list[list[tuple[float, float]]]:
    """Runs of drawable points as plot coordinates, thinned to a min and a max per bucket of x
    (what a pixel column would show anyway); a gap ends a run."""
    per = max(1, math.ceil(len(values) / buckets))
    runs: list[list[tuple[float, float]]] = [[]]
    for start in range(0, len(values), per):
        chunk = [(i, v) for i, v in enumerate(values[start : start + per], start)]
        good = [(i, v) for i, v in chunk if math.isfinite(v) and (v > 0 or not log)]
        if not good:
            if runs[-1]:
                runs.append([])
            continue
        if per > 1 and len(good) > 2:
            low, high = min(good, key=lambda p: p[1]), max(good, key=lambda p: p[1])
            good = sorted({low, high})
        runs[-1].extend((x(i), y(v)) for i, v in good)
    return [run for run in runs if run]


def _path(runs: list[list[tuple[float, float]]]) -> str:
    parts = []
    for run in runs:
        head, *rest = run
        parts.append(f"M{head[0]:.1f} {head[1]:.1f}" + "".join(f"L{a:.1f} {b:.1f}" for a, b in rest))
        if not rest:  # a single point: a dot, not nothing
            parts.append("h0.1")
    return "".join(parts)


def render_panel(panel: Panel) -> str:
    """``panel`` as ``<figure>``: the title and note in HTML (they wrap), the chart in SVG."""
    esc = html.escape
    caption = f"<figcaption><b>{esc(panel.title)}</b>"
    if panel.note:
        caption += f" <span class='note'>{esc(panel.note)}</span>"
    caption += "</figcaption>"
    return f"<figure class='panel'>{caption}{panel_svg(panel)}</figure>"


def panel_svg(panel: Panel) -> str:
    esc = html.escape
    limits = panel.y_range or y_limits([panel])
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f"<svg class='plot' viewBox='0 0 {WIDTH} {HEIGHT}' font-size='{FONT}' role='img' "
        f"aria-label='{esc(panel.title)}'><title>{esc(panel.title)}</title>",
        f"<rect class='frame' x='{LEFT}' y='{TOP}' width='{width}' height='{height}'/>",
    ]
    if limits is None:
        parts.append(
            f"<text class='empty' x='{LEFT + width / 2}' y='{TOP + height / 2}' text-anchor='middle'>"
            "nothing to draw</text></svg>"
        )
        return "".join(parts)
    if panel.log:  # rounding noise far below the curves (a gradient that is exactly 0) must not squash them
        limits = (max(limits[0], limits[1] / 10**LOG_DECADES), limits[1])
    marks = ticks(*limits, panel.log)
    low, high = marks[0], marks[-1]
    scale = math.log10 if panel.log else (lambda v: v)
    span = (scale(high) - scale(low)) or 1.0
    steps = max((len(s.values) for s in panel.series), default=1)

    def x(i: float) -> float:
        return LEFT + width * i / max(steps - 1, 1)

    def y(v: float) -> float:
        clamped = min(max(v, low), high)
        return TOP + height * (1 - (scale(clamped) - scale(low)) / span)

    step = marks[1] - marks[0] if len(marks) > 1 else 0.0
    for mark in marks:
        parts.append(f"<path class='grid' d='M{LEFT} {y(mark):.1f}h{width}'/>")
        parts.append(
            f"<text class='tick' x='{LEFT - 3}' y='{y(mark) + FONT * 0.35:.1f}' text-anchor='end'>"
            f"{esc(tick_label(mark, panel.log, step))}</text>"
        )
    last = steps - 1
    for i, anchor in ((0, "start"), (last, "end")):
        parts.append(
            f"<text class='tick' x='{x(i):.1f}' y='{TOP + height + FONT + 2}' text-anchor='{anchor}'>"
            f"{i + 1}</text>"  # steps count from 1
        )
    parts.append(
        f"<text class='tick' x='{LEFT + width / 2}' y='{TOP + height + FONT + 2}' text-anchor='middle'>"
        f"{esc(panel.x_label)}</text>"
    )
    for value, label in panel.rules:
        parts.append(
            f"<path class='rule' d='M{LEFT} {y(value):.1f}h{width}'><title>{esc(label)}</title></path>"
        )
    for series in panel.series:
        d = _path(_points(series.values, panel.log, x, y, width))
        if d:
            parts.append(
                f"<path class='s {esc(series.style)}' data-label='{esc(series.label)}' d='{d}'>"
                f"<title>{esc(series.label)}</title></path>"
            )
    parts.append("</svg>")
    return "".join(parts)


# -- intervals: one row per run, a dot for the mean, a bar for the interval, ticks for the seeds ----
@dataclass(frozen=True)
class IntervalRow:
    label: str
    mean: float
    low: float
    high: float
    points: tuple[float, ...]  # the per-seed values the interval was computed from


@dataclass(frozen=True)
class IntervalChart:
    title: str
    rows: tuple[IntervalRow, ...]
    band: tuple[float, float] = (0.0, 0.0)  # shaded: "about the same"
    unit: str = "%"


ROW, LABEL_WIDTH, CHART_WIDTH = 22, 96, 440


def render_intervals(chart: IntervalChart) -> str:
    esc = html.escape
    rows = chart.rows
    height = TOP + ROW * len(rows) + BOTTOM + 4
    width = CHART_WIDTH - LABEL_WIDTH - RIGHT - 4
    values = [v for r in rows for v in (r.low, r.high, *r.points) if math.isfinite(v)] + list(chart.band)
    low, high = (min(values), max(values)) if values else (-1.0, 1.0)
    marks = ticks(min(low, 0.0), max(high, 0.0), log=False, count=4)
    low, high = marks[0], marks[-1]
    step = marks[1] - marks[0]

    def x(v: float) -> float:
        return LABEL_WIDTH + width * (min(max(v, low), high) - low) / ((high - low) or 1.0)

    bottom = TOP + ROW * len(rows)
    parts = [
        f"<svg class='plot intervals' viewBox='0 0 {CHART_WIDTH} {height}' font-size='{FONT}' role='img' "
        f"aria-label='{esc(chart.title)}'><title>{esc(chart.title)}</title>",
        f"<rect class='band' x='{x(chart.band[0]):.1f}' y='{TOP}' "
        f"width='{x(chart.band[1]) - x(chart.band[0]):.1f}' height='{ROW * len(rows)}'/>",
    ]
    for mark in marks:
        parts.append(f"<path class='{'zero' if mark == 0 else 'grid'}' d='M{x(mark):.1f} {TOP}V{bottom}'/>")
        parts.append(
            f"<text class='tick' x='{x(mark):.1f}' y='{bottom + FONT + 2}' text-anchor='middle'>"
            f"{esc(tick_label(mark, False, step))}{esc(chart.unit)}</text>"
        )
    for index, row in enumerate(rows):
        middle = TOP + ROW * index + ROW / 2
        parts.append(
            f"<text class='label' x='{LABEL_WIDTH - 6}' y='{middle + FONT * 0.35:.1f}' text-anchor='end'>"
            f"{esc(row.label)}</text>"
        )
        parts.append(
            f"<g class='row' data-label='{esc(row.label)}'><title>{esc(row.label)}: mean {row.mean:.3g}"
            f"{esc(chart.unit)}, interval {row.low:.3g} to {row.high:.3g}{esc(chart.unit)}</title>"
        )
        for point in row.points:
            parts.append(f"<path class='seed' d='M{x(point):.1f} {middle - 5:.1f}v10'/>")
        parts.append(f"<path class='interval' d='M{x(row.low):.1f} {middle:.1f}H{x(row.high):.1f}'/>")
        parts.append(f"<circle class='mean' cx='{x(row.mean):.1f}' cy='{middle:.1f}' r='3.5'/></g>")
    parts.append("</svg>")
    return "".join(parts)
