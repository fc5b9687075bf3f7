"""The inline SVG charts of the training report: ticks, the mapping of values to the viewBox,
gaps, thinning, and the interval chart. Parsed back with the standard library's XML parser."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from common.commands import svgplot
from common.commands.svgplot import IntervalChart, IntervalRow, Panel, Series

PLOT_LEFT, PLOT_RIGHT = svgplot.LEFT, svgplot.WIDTH - svgplot.RIGHT
PLOT_TOP, PLOT_BOTTOM = svgplot.TOP, svgplot.HEIGHT - svgplot.BOTTOM


def parsed(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def runs(path: str) -> list[list[tuple[float, float]]]:
    """A path's ``d`` as runs of points: each M starts one."""
    out = []
    for move in re.findall(r"M[^M]*", path):
        numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", move.replace("h0.1", ""))]
        out.append(list(zip(numbers[0::2], numbers[1::2], strict=True)))
    return out


def series_paths(svg: str) -> dict[str, str]:
    return {p.get("data-label"): p.get("d") for p in parsed(svg).iter("path") if p.get("data-label")}


def tick_texts(svg: str) -> list[str]:
    return [t.text for t in parsed(svg).iter("text") if t.get("class") == "tick"]


@pytest.mark.parametrize(
    ("low", "high", "log", "expected"),
    [
        (0.1, 0.9, False, [0.0, 0.5, 1.0]),
        (3e-8, 4e-6, True, [1e-8, 1e-7, 1e-6, 1e-5]),
        (2.0, 2.0, False, [1.8, 2.0, 2.2]),  # a flat line still gets an axis
        (1e-12, 1.0, True, [1e-12, 1e-9, 1e-6, 1e-3, 1.0]),  # many decades: every third labelled
    ],
)
def test_ticks_cover_the_values(low, high, log, expected):
    assert svgplot.ticks(low, high, log) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "log", "step", "label"),
    [(1e-7, True, 0, "1e-7"), (0.01, True, 0, "0.01"), (100.0, True, 0, "100"), (0.5, False, 0.5, "0.5"),
     (2.0, False, 0.5, "2.0"), (0.0, False, 0.5, "0"), (2e-5, False, 1e-5, "2e-5")],
)  # fmt: skip
def test_tick_labels_are_short(value, log, step, label):
    assert svgplot.tick_label(value, log, step) == label


def test_values_map_into_the_plot_area_in_order():
    values = [float(v) for v in range(11)]
    svg = svgplot.panel_svg(Panel("line", (Series("up", values, "w"),)))
    (run,) = runs(series_paths(svg)["up"])
    assert len(run) == 11
    xs, ys = [x for x, _ in run], [y for _, y in run]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True), "x grows right, y grows up"
    assert xs[0] == pytest.approx(PLOT_LEFT) and xs[-1] == pytest.approx(PLOT_RIGHT)
    # the axis runs 0..10 exactly (nice ticks), so the ends sit on the frame
    assert ys[0] == pytest.approx(PLOT_BOTTOM) and ys[-1] == pytest.approx(PLOT_TOP)
    assert tick_texts(svg)[:3] == ["0", "5", "10"]


def test_a_log_scale_maps_decades_evenly_and_leaves_gaps_for_what_it_cannot_draw():
    values = [1e-6, 1e-5, 0.0, 1e-4, math.nan, 1e-3]
    svg = svgplot.panel_svg(Panel("log", (Series("dev", values, "dev"),), log=True))
    pieces = runs(series_paths(svg)["dev"])
    assert [len(piece) for piece in pieces] == [2, 1, 1], "0 and nan each end a run"
    ys = [y for piece in pieces for _, y in piece]
    gaps = [a - b for a, b in zip(ys, ys[1:], strict=False)]
    assert gaps == pytest.approx([gaps[0]] * 3, abs=0.11), "one decade, one equal step"


def test_a_long_series_is_thinned_to_its_extremes_per_column():
    values = [math.sin(i / 50) for i in range(5000)]
    values[2345] = 3.0  # one spike: thinning must keep it
    svg = svgplot.panel_svg(Panel("long", (Series("s", values, "w"),)))
    points = [p for run in runs(series_paths(svg)["s"]) for p in run]
    assert len(points) <= 2 * (svgplot.WIDTH - svgplot.LEFT - svgplot.RIGHT) + 2
    marks = svgplot.ticks(min(values), max(values), log=False)
    spike = PLOT_TOP + (PLOT_BOTTOM - PLOT_TOP) * (marks[-1] - 3.0) / (marks[-1] - marks[0])
    assert min(y for _, y in points) == pytest.approx(spike, abs=0.06), "the spike survives thinning"


def test_a_log_axis_keeps_to_six_decades_below_its_top():
    """A gradient that is 0 in theory shows as rounding noise (1e-17 here): it sits on the floor
    instead of squashing every real curve into the top of the panel."""
    values = [1e-17, 1e-3, 0.1]
    svg = svgplot.panel_svg(Panel("floor", (Series("g", values, "w"),), log=True))
    labels = tick_texts(svg)
    assert labels[0] == f"1e-{1 + svgplot.LOG_DECADES}" and "1e-17" not in labels, labels
    (run,) = runs(series_paths(svg)["g"])
    assert run[0][1] == pytest.approx(PLOT_BOTTOM), "the noise is drawn on the floor"


def test_a_shared_range_puts_small_multiples_on_one_scale():
    small = Panel("a", (Series("s", [1e-8, 2e-8], "dev"),), log=True)
    large = Panel("b", (Series("s", [1e-5, 1e-4], "dev"),), log=True)
    shared = svgplot.y_limits([small, large])
    assert shared == (1e-8, 1e-4)
    a, b = (svgplot.panel_svg(Panel(p.title, p.series, True, y_range=shared)) for p in (small, large))
    assert tick_texts(a) == tick_texts(b)


def test_a_panel_with_nothing_to_draw_says_so():
    svg = svgplot.panel_svg(Panel("empty", (Series("s", [math.nan, 0.0], "dev"),), log=True))
    assert "nothing to draw" in svg
    parsed(svg)


def test_names_are_escaped():
    figure = svgplot.render_panel(Panel("<b>&", (Series("'\"<x>", [1.0, 2.0], "w"),), note="<i>"))
    assert "&lt;b&gt;&amp;" in figure and "<i>" not in figure and "<x>" not in figure
    ET.fromstring(f"<div>{figure}</div>")


def test_interval_rows_put_mean_interval_and_seeds_where_they_belong():
    rows = (
        IntervalRow("oracle", -1.0, -2.0, 0.0, (-2.0, -1.0, 0.0)),
        IntervalRow("torch", 1.0, 0.5, 1.5, (1.0,)),
    )
    svg = svgplot.render_intervals(IntervalChart("t", rows, band=(-0.1, 0.1)))
    root = parsed(svg)
    groups = [g for g in root.iter("g") if g.get("class") == "row"]
    assert [g.get("data-label") for g in groups] == ["oracle", "torch"]
    zero = next(p for p in root.iter("path") if p.get("class") == "zero")
    x0 = float(re.match(r"M(-?[\d.]+)", zero.get("d"))[1])
    first = groups[0]
    mean = float(next(first.iter("circle")).get("cx"))
    (interval,) = [p for p in first.iter("path") if p.get("class") == "interval"]
    left, right = (float(v) for v in re.findall(r"[MH](-?[\d.]+)", interval.get("d")))
    assert left < mean < right == pytest.approx(x0), "the oracle's interval ends at 0"
    seeds = sorted(
        float(re.match(r"M(-?[\d.]+)", p.get("d"))[1]) for p in first.iter("path") if p.get("class") == "seed"
    )
    assert seeds == pytest.approx([left, mean, right])
