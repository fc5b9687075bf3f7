"""`make train`'s report, framework-free: fake training records made from the numpy oracle's own
runs stand in for the backends' children.

The page reads in words (no file names as headings), explains every column of every table, draws
each backend's deviation from the oracle (not its loss, which would hide under the others) and
ends with a conclusion that follows the measured numbers, whichever model wins on held-out data.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from common.commands import train_report as tr
from common.commands.training import (
    HELD_OUT_SAMPLES,
    baseline_start,
    mse,
    oracle_run,
    progress_ticks,
    regression_data,
    runs_record,
)
from common.core.models import TIED

STEPS = 30
LR = 0.05
NAMES = ("torch", "mxnet", "jax", "nnx", "tensorflow", "keras_jax", "keras_torch", "keras2")


@functools.cache
def _oracle_record() -> dict:
    tied_start, untied_start = baseline_start(TIED)
    tied = oracle_run(TIED, tied_start, STEPS, LR)
    untied = oracle_run(TIED.untied(), untied_start, STEPS, LR, watch=False)
    return runs_record(tied, untied, LR)


def fake_record(name: str, index: int = 0) -> dict:
    """A finished backend: the oracle's run with its losses nudged by a float32-sized, per-backend
    relative error, so every backend deviates from the oracle by a different, known amount."""
    record = copy.deepcopy(_oracle_record())
    for model in ("tied", "untied"):
        record[model]["losses"] = [
            loss * (1 + (index + 1) * 1e-8 * (1 + step % 3))
            for step, loss in enumerate(record[model]["losses"])
        ]
    record["tied"]["listed_params"], record["untied"]["listed_params"] = 6, 8
    record.update(backend=name, ok=True, versions={"framework": f"{index}.0"}, timing={"seconds": 1.5})
    return record


def failed(name: str) -> dict:
    return {"backend": name, "ok": False, "error": "ImportError: " + "a_very_long_module_name." * 12}


def fake_records(names=NAMES, failing=("keras2",)) -> dict[str, dict]:
    return {
        name: failed(name) if name in failing else fake_record(name, index)
        for index, name in enumerate(names)
    }


def untrained(record: dict, model: str) -> dict:
    """``record`` with ``model``'s final parameters put back to the start: that model loses."""
    start = baseline_start(TIED)[0 if model == "tied" else 1]
    record = copy.deepcopy(record)
    record[model]["final_params"] = {k: v.tolist() for k, v in start.items()}
    return record


@functools.cache
def report_of(names=NAMES, failing=("keras2",)) -> tr.Report:
    return tr.build_report(fake_records(names, failing), STEPS, LR)


class Page(HTMLParser):
    """Headings, tables (headers) with the legend after each, figure captions and images."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.tables: list[dict] = []
        self.images: list[dict] = []
        self.conclusion = ""
        self._in: list[str] = []
        self._text = ""
        self._conclusion = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2", "h3", "th", "dt"):
            self._in.append(tag)
            self._text = ""
        if tag == "table":
            self.tables.append({"headers": [], "legend": []})
        if tag == "img":
            self.images.append(attrs)
        if tag == "p" and attrs.get("class") == "conclusion":
            self._conclusion = True

    def handle_data(self, data):
        if self._in:
            self._text += data
        if self._conclusion:
            self.conclusion += data

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()
            text = " ".join(self._text.split())
            if tag == "th":
                self.tables[-1]["headers"].append(text)
            elif tag == "dt":
                self.tables[-1]["legend"].append(text)
            else:
                self.headings.append(text)
        if tag == "p":
            self._conclusion = False


@pytest.fixture(scope="module")
def page() -> Page:
    parsed = Page()
    parsed.feed(tr.render_html(report_of()))
    return parsed


# -- the page ------------------------------------------------------------------------------------------
def test_headings_are_words_not_file_names(page):
    assert len(page.headings) >= 5, page.headings
    for heading in page.headings + [image["alt"] for image in page.images]:
        assert not re.search(r"\.(png|json|html)\b|_", heading), f"heading={heading!r}, but should be words"
        assert len(heading.split()) >= 2, f"heading={heading!r}, but should be a phrase"


def test_every_column_of_every_table_is_explained(page):
    assert len(page.tables) == 3
    for table in page.tables:
        assert table["legend"] == table["headers"], (
            f"legend={table['legend']}, but should be {table['headers']}"
        )
    for t in (report_of().parity, report_of().budget, report_of().sharing):
        for column in t.columns:
            assert len(column.explanation.split()) >= 4, (
                f"{column.header}: {column.explanation!r} is too short"
            )


def test_figures_are_embedded(page):
    assert len(page.images) == 3
    for image in page.images:
        assert image["src"].startswith("data:image/png;base64,"), image["src"][:40]


def test_a_failed_backend_keeps_its_row_with_its_error():
    rows = {row[0]: row for row in report_of().parity.rows}
    assert rows["keras2"][1].startswith("FAILED: ImportError"), rows["keras2"]
    assert len(rows["torch"]) == len(report_of().parity.columns)
    assert "keras2" in report_of().figures["train_loss.png"].caption


def test_the_page_renders_when_every_backend_failed():
    report = tr.build_report({"torch": failed("torch")}, STEPS, LR)
    assert "No backend finished" in report.conclusion
    assert "<table" in tr.render_html(report)


# -- the loss figure: deviations, one distinguishable curve per backend ---------------------------------
def test_the_loss_figure_draws_each_backends_deviation_from_the_oracle():
    records = fake_records(NAMES[:4], failing=())
    reference = tr.Reference.compute(STEPS, LR)
    figure = tr.loss_figure(records, reference)
    top, bottom = figure.axes
    assert [line.get_label() for line in top.lines] == ["tied (the D2L model)", "untied baseline"]
    np.testing.assert_allclose(top.lines[0].get_ydata(), reference.tied.losses)
    assert bottom.get_yscale() == "log"
    drawn = {line.get_label().split(" ")[0]: line for line in bottom.lines}
    assert list(drawn) == list(records)
    for name, record in records.items():
        expected = [
            abs(a - b) / b for a, b in zip(record["tied"]["losses"], reference.tied.losses, strict=True)
        ]
        np.testing.assert_allclose(drawn[name].get_ydata(), expected, rtol=1e-12, err_msg=name)
        assert max(expected) < 1e-6  # the loss itself (~0.5) would be a different plot altogether
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in drawn.values()}
    assert len(styles) == len(drawn), f"styles={styles}, but every backend should have its own"
    colours = {line.get_color() for line in drawn.values()}
    assert len(colours) == len(drawn)


def test_eight_backends_get_eight_styles():
    styles = {tuple(sorted(tr.backend_style(i, 8, 200).items(), key=str)) for i in range(8)}
    assert len({(dict(s)["color"], dict(s)["linestyle"], dict(s)["marker"]) for s in styles}) == 8


def test_an_exact_match_is_a_gap_not_a_zero_on_the_log_scale():
    reference = tr.Reference.compute(STEPS, LR)
    record = fake_record("torch")
    record["tied"]["losses"] = list(reference.tied.losses)
    curves = tr.deviation_curves({"torch": record}, reference)
    assert all(math.isnan(v) for v in curves["torch"])


# -- held-out data --------------------------------------------------------------------------------------
def test_held_out_data_share_the_hidden_function_but_not_the_inputs():
    x, y = regression_data(TIED)
    held_x, held_y = regression_data(TIED, held_out=HELD_OUT_SAMPLES)
    assert held_x.shape == (HELD_OUT_SAMPLES, TIED.in_features)
    assert not {tuple(row) for row in held_x} & {tuple(row) for row in x}
    again_x, again_y = regression_data(TIED)  # asking for held-out data leaves the training set as it was
    assert np.array_equal(again_x, x) and np.array_equal(again_y, y)
    # same a, b: a model fit on one set is scored on the other; zero weights predict 0 on both
    zeros = {name: np.zeros(shape) for name, shape in TIED.param_shapes.items()}
    assert mse(TIED, zeros, held_x, held_y) == pytest.approx(float(np.mean(held_y.astype(np.float64) ** 2)))


# -- the conclusion follows the numbers ------------------------------------------------------------------
def _numbers(fit: tr.Fit) -> list[str]:
    return [
        f"{fit.held_out_tied:.4f}",
        f"{fit.held_out_untied:.4f}",
        f"{fit.train_tied:.4f}",
        f"{fit.train_untied:.4f}",
    ]


def test_the_conclusion_quotes_the_measured_numbers():
    report = report_of()
    fit = report.fits["torch"]
    for number in _numbers(fit):
        assert number in report.conclusion, f"{number} missing from: {report.conclusion}"
    assert "121 vs 193 scalars" in report.conclusion
    assert "Tying saves 37% of the parameters" in report.conclusion


@pytest.mark.parametrize("loser", ["tied", "untied"])
def test_the_held_out_winner_follows_the_records(loser):
    """Put one model's final parameters back to the untrained start: the text names the other."""
    records = {name: untrained(fake_record(name, i), loser) for i, name in enumerate(NAMES[:2])}
    report = tr.build_report(records, STEPS, LR, pictures=False)
    fit = report.fits["torch"]
    held_x, held_y = regression_data(TIED, held_out=HELD_OUT_SAMPLES)
    params = records["torch"][loser]["final_params"]
    spec = TIED if loser == "tied" else TIED.untied()
    assert getattr(fit, f"held_out_{loser}") == pytest.approx(mse(spec, params, held_x, held_y))
    winner = "untied" if loser == "tied" else "tied"
    assert fit.held_out_winner == winner
    for number in _numbers(fit):
        assert number in report.conclusion
    if winner == "tied":
        assert "lower held-out loss" in report.conclusion
        assert "sharing is a good idea on both counts" in report.conclusion
    else:
        assert "higher held-out loss" in report.conclusion
        assert "pays off in size only" in report.conclusion
    assert "disagree" not in report.conclusion


def test_changed_numbers_change_the_conclusion():
    base = tr.build_report(fake_records(NAMES[:2], failing=()), STEPS, LR, pictures=False)
    flipped = tr.build_report(
        {name: untrained(r, "tied") for name, r in fake_records(NAMES[:2], failing=()).items()},
        STEPS,
        LR,
        pictures=False,
    )
    assert base.conclusion != flipped.conclusion
    assert f"{flipped.fits['torch'].held_out_tied:.4f}" in flipped.conclusion
    assert f"{flipped.fits['torch'].held_out_tied:.4f}" not in base.conclusion


def test_backends_that_disagree_are_named():
    records = fake_records(NAMES[:3], failing=())
    records["mxnet"] = untrained(records["mxnet"], "tied")
    records["jax"] = untrained(records["jax"], "untied")
    report = tr.build_report(records, STEPS, LR, pictures=False)
    assert "disagree" in report.conclusion
    assert "the tied model in torch, jax; the untied model in mxnet" in report.conclusion


def test_percent_never_prints_an_exponent():
    assert [tr.percent(x) for x in (0.3731, -0.0071, 0.00043, 1.5, 0.0)] == [
        "37%",
        "0.71%",
        "0.043%",
        "150%",
        "0%",
    ]


# -- progress ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [1, 7, 100, 400])
def test_progress_reports_at_most_once_per_tenth(total):
    lines: list[str] = []
    show = progress_ticks(total, lines.append)
    for done in range(1, total + 1):
        show(done, f"step {done}")
    assert 0 < len(lines) <= 10
    assert lines[-1].endswith(f"step {total}") and "100%" in lines[-1]


@pytest.mark.parametrize(
    ("held_out_tied", "phrase", "verdict"),
    [
        (0.40, "a 20% lower held-out loss (0.4000 vs 0.5000)", "sharing is a good idea on both counts"),
        (
            0.55,
            "a 10% higher held-out loss (0.5500 vs 0.5000)",
            "the untied model's 72 extra scalars buy a 10%",
        ),
        (0.5002, "the same held-out loss (within 0.1%: 0.5002 vs 0.5000)", "costs nothing that matters"),
    ],
)
def test_the_conclusion_is_written_from_the_fit(held_out_tied, phrase, verdict):
    fit = tr.Fit(train_tied=0.303, train_untied=0.300, held_out_tied=held_out_tied, held_out_untied=0.5)
    text = tr.conclusion({tr.ORACLE: fit, "torch": fit}, {})
    assert "a 1% higher training loss (0.3030 vs 0.3000)" in text, text
    assert phrase in text, text
    assert verdict in text, text
    assert "torch's final parameters" in text
