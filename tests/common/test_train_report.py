"""`make train`'s report, framework-free: fake training records made from the numpy oracle's own
runs (under each backend's declared BatchNorm conventions) stand in for the backends' children.

The page reads in words, puts its verdict first, explains every column of every table, draws
every layer of every backend over the oracle's curve, and answers "why share" from several seeds
with an interval, in words that follow the measured numbers and state their uncertainty.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from common.commands import cli
from common.commands import train_page as page_module
from common.commands import train_report as tr
from common.commands.svgplot import Panel
from common.commands.training import (
    HELD_OUT_SAMPLES,
    MODELS,
    SeedRun,
    baseline_start,
    mse,
    oracle_run,
    progress_ticks,
    regression_data,
    runs_record,
)
from common.config import backend_names
from common.core.models import BATCHNORM, TIED, TIED_BATCHNORM
from common.core.oracle import Conventions
from common.declarations import declaration

STEPS = 30
WATCHED = ("param_norms", "grad_norms", "contribution_norms", "state_norms")
NUDGE = 1e-8  # per backend index, relative: every watched norm of a fake record is off by this much
LR = 0.05
SEEDS = 5
NAMES = backend_names()


@functools.cache
def _oracle_record(spec_name: str, conventions: Conventions) -> dict:
    spec = MODELS[spec_name]
    watched = oracle_run(spec, baseline_start(spec)[0], STEPS, LR, conventions=conventions)
    seeds = [
        SeedRun(
            seed,
            *(
                oracle_run(kind, start, STEPS, LR, watch=False, conventions=conventions)
                for kind, start in zip((spec, spec.untied()), baseline_start(spec, seed), strict=True)
            ),
        )
        for seed in range(SEEDS if spec.ties else 0)
    ]
    return runs_record(watched, seeds, LR)


def fake_record(name: str, index: int = 0, spec=TIED) -> dict:
    """A finished backend: the oracle's runs under its declared conventions, with the losses and
    every watched norm nudged by a float32-sized, per-backend relative error, so each deviates by
    a different, known amount (and a chart of the oracle's values is not a chart of the record's)."""
    record = copy.deepcopy(_oracle_record(spec.name, tr.conventions_for(spec, name)))
    runs = [record["watched"]] + [run[kind] for run in record["seed_runs"] for kind in ("tied", "untied")]
    for run in runs:
        run["losses"] = [
            loss * (1 + (index + 1) * 1e-8 * (1 + step % 3)) for step, loss in enumerate(run["losses"])
        ]
    for step in record["watched"]["history"]:
        for key in WATCHED:
            step[key] = {position: value * (1 + NUDGE * (index + 1)) for position, value in step[key].items()}
    listed = {"model": {"params": len(spec.params), "state": len(spec.state)}}
    if spec.ties:
        listed["untied"] = {"params": len(spec.untied().params)}
    record.update(
        backend=name, ok=True, versions={"framework": f"{index}.0"}, timing={"seconds": 1.5}, listed=listed
    )
    return record


def failed(name: str) -> dict:
    return {"backend": name, "ok": False, "error": "ImportError: " + "a_very_long_module_name." * 12}


def fake_records(names=NAMES, failing=(NAMES[1],), spec=TIED) -> dict[str, dict]:
    return {
        name: failed(name) if name in failing else fake_record(name, index, spec)
        for index, name in enumerate(names)
    }


def spoiled(record: dict, model: str) -> dict:
    """``record`` with ``model``'s final output bias of every seed moved by 2: its predictions are
    off by 2 everywhere, so that model loses on any data."""
    record = copy.deepcopy(record)
    for run in record["seed_runs"]:
        bias = run[model]["final_params"]["layers.6.bias"]
        run[model]["final_params"]["layers.6.bias"] = [value + 2.0 for value in bias]
    return record


@functools.cache
def report_of(names=NAMES, failing=(NAMES[1],), spec=TIED) -> tr.Report:
    return tr.build_report(fake_records(names, failing, spec), STEPS, LR, spec, SEEDS)


class Page(HTMLParser):
    """Headings, sections, tables (headers) with the legend after each, panels per card."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.sections: list[str] = []
        self.tables: list[dict] = []
        self.cards: dict[str, list[str]] = {}  # backend -> panel titles
        self.summary = ""
        self.conclusion = ""
        self._in: list[str] = []
        self._text = ""
        self._card = None
        self._panel = False
        self._where = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2", "h3", "th", "dt", "b"):
            self._in.append(tag)
            self._text = ""
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
            if attrs.get("class") == "card":
                self._card = attrs["id"].removeprefix("layers-")
                self.cards[self._card] = []
            if attrs.get("id") == "summary":
                self._where = "summary"
        if tag == "figure" and attrs.get("class") == "panel":
            self._panel = True
        if tag == "table":
            self.tables.append({"headers": [], "legend": []})
        if tag == "p" and attrs.get("class") == "conclusion":
            self._where = "conclusion"

    def handle_data(self, data):
        if self._in:
            self._text += data
        if self._where == "summary":
            self.summary += data
        if self._where == "conclusion":
            self.conclusion += data

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()
            text = " ".join(self._text.split())
            if tag == "th":
                self.tables[-1]["headers"].append(text)
            elif tag == "dt":
                self.tables[-1]["legend"].append(text)
            elif tag == "b":
                if self._panel and self._card:
                    self.cards[self._card].append(text)
            else:
                self.headings.append(text)
        if tag == "figure":
            self._panel = False
        if tag == "section":
            self._card = None if self._card else self._card
            self._where = ""
        if tag == "p" and self._where == "conclusion":
            self._where = ""


def page_of(report: tr.Report) -> Page:
    parsed = Page()
    parsed.feed(page_module.render_html(report))
    return parsed


@pytest.fixture(scope="module")
def page() -> Page:
    return page_of(report_of())


def panel(report: tr.Report, backend: str, title: str) -> Panel:
    panels, _ = report.cards[backend]
    found = [p for p in panels if p.title == title]
    assert found, f"no panel {title!r} for {backend}; panels: {[p.title for p in panels]}"
    return found[0]


def series(p: Panel, label: str) -> list[float]:
    return list(next(s.values for s in p.series if s.label == label))


# -- the page ------------------------------------------------------------------------------------------
def test_headings_are_words_not_file_names(page):
    assert len(page.headings) >= 5, page.headings
    for heading in page.headings:
        assert not re.search(r"\.(png|json|html)\b", heading), f"heading={heading!r}, but should be words"
        assert len(heading.split()) >= 1, f"heading={heading!r}"


def test_the_verdict_comes_first(page):
    """The summary is the first section, before the tables, and it quotes the interval."""
    assert page.sections[:2] == ["summary", "parity"], page.sections
    held = report_of().sharing[tr.ORACLE].held_out
    assert tr.interval_text(held) in " ".join(page.summary.split())
    text = tr.render_text(report_of())
    assert text.splitlines()[0].startswith(f"{len(NAMES) - 1} of {len(NAMES)} backends trained tied")
    assert text.index("Why share") < text.index("every backend against the numpy oracle")


def test_every_column_of_every_table_is_explained(page):
    assert len(page.tables) == 4  # parity, budget, sharing over seeds, the oracle's seeds
    for table in page.tables:
        assert table["legend"] == table["headers"], (
            f"legend={table['legend']}, but should be {table['headers']}"
        )
    report = report_of()
    for t in (report.parity, report.budget, report.sharing_table, report.seeds_table):
        for column in t.columns:
            assert len(column.explanation.split()) >= 2, (
                f"{column.header}: {column.explanation!r} is too short"
            )


def test_a_failed_backend_keeps_its_row_with_its_error_and_gets_no_card(page):
    rows = {row[0]: row for row in report_of().parity.rows}
    assert rows[NAMES[1]][1].startswith("FAILED: ImportError"), rows[NAMES[1]]
    assert len(rows[NAMES[0]]) == len(report_of().parity.columns)
    assert NAMES[1] not in page.cards
    assert "Not drawn, because they failed: " + NAMES[1] in page_module.render_html(report_of())


def test_the_page_renders_when_every_backend_failed():
    report = tr.build_report({NAMES[0]: failed(NAMES[0])}, STEPS, LR, TIED, SEEDS)
    assert "No backend finished" in report.conclusion
    assert report.summary[0] == f"0 of 1 backends trained tied; failed: {NAMES[0]}."
    assert "<table" in page_module.render_html(report)


def test_a_record_of_another_model_is_not_compared():
    records = {NAMES[0]: fake_record(NAMES[0], spec=BATCHNORM)}
    report = tr.build_report(records, STEPS, LR, TIED, SEEDS)
    assert report.parity.rows[0][1] == "FAILED: the record trained 'batchnorm', not 'tied'"


# -- every layer of every backend, over the oracle ------------------------------------------------------
TIED_PANELS = [
    "layers.0 Dense(8): parameter norm",
    "layers.0 Dense(8): gradient norm",
    "layers.2 = layers.4 Dense(8): parameter norm",
    "layers.2 = layers.4 Dense(8): gradient norm",
    "layers.2 = layers.4: each use's weight gradient",
    "layers.6 Dense(1): parameter norm",
    "layers.6 Dense(1): gradient norm",
]


def test_every_finished_backend_gets_a_card_of_every_layer(page):
    finished = [name for name in NAMES if name != NAMES[1]]
    assert list(page.cards) == finished
    for name in finished:
        assert [" ".join(t.split()) for t in page.cards[name]] == TIED_PANELS, name


def test_each_curve_is_the_backends_own_over_the_oracles():
    """The backend's series is its record's watched history; the reference beneath is the oracle's."""
    report = report_of()
    reference = oracle_run(TIED, baseline_start(TIED)[0], STEPS, LR)
    for name in (NAMES[0], NAMES[-1]):
        history = report.records[name]["watched"]["history"]
        for title, key, position in [
            (TIED_PANELS[0], "param_norms", "layers.0.weight"),
            (TIED_PANELS[3], "grad_norms", "layers.2.bias"),
            (TIED_PANELS[4], "contribution_norms", "layers.4.weight"),
        ]:
            p = panel(report, name, title)
            label = {"layers.4.weight": "use at layers.4", "layers.2.bias": "bias"}.get(position, "weight")
            assert series(p, label) == [step[key][position] for step in history], (name, title)
            expected = [getattr(step, key)[position] for step in reference.steps]
            np.testing.assert_allclose(series(p, f"{tr.ORACLE}: {label}"), expected, rtol=1e-12)
        assert panel(report, name, TIED_PANELS[1]).log and not panel(report, name, TIED_PANELS[0]).log


def test_a_curve_that_leaves_the_oracle_shows_in_its_panel_and_the_table():
    records = fake_records(NAMES[:2], failing=())
    history = records[NAMES[1]]["watched"]["history"]
    scale = max(step["param_norms"][p] for step in history for p in ("layers.6.weight", "layers.6.bias"))
    history[10]["param_norms"]["layers.6.weight"] += 0.02 * scale  # 2% of its panel's largest value
    report = tr.build_report(records, STEPS, LR, TIED, SEEDS)
    nudged = panel(report, NAMES[1], TIED_PANELS[5])
    assert nudged.note == "max deviation 2.0e-02", nudged.note
    untouched = f"max deviation {tr._e(NUDGE)}"  # fake_record's own nudge, index 0
    assert panel(report, NAMES[0], TIED_PANELS[5]).note == untouched
    column = report.parity.headers.index("watched-curve deviation")
    assert [row[column] for row in report.parity.rows] == [tr._e(NUDGE), "2.0e-02"]
    assert (
        "largest deviation of any watched curve (every layer's parameters, gradients) 2.0e-02"
        in report.summary[1]
    )


def _by_declared(fact: str) -> dict[object, str]:
    """One backend per declared value of a BatchNorm fact, chosen by the declarations alone."""
    found: dict[object, str] = {}
    for name in NAMES:
        facts = declaration(name).facts
        if fact in facts:
            found.setdefault(facts[fact], name)
    return found


def test_a_batchnorm_model_plots_running_statistics_beside_the_parameters_under_each_backends_conventions():
    """BATCHNORM: a frozen Dense (layers.3) and a frozen BatchNorm (layers.4). A frozen layer gets no
    gradient panel and a flat parameter norm; the frozen BatchNorm's reference statistics follow
    the backend's declared convention: updated by a framework that keeps training mode, constant
    for one that runs it in inference mode."""
    by_frozen = _by_declared("frozen_batchnorm")
    assert set(by_frozen) == {"training", "inference"}, "the declarations hold both conventions"
    names = tuple(by_frozen.values())
    report = tr.build_report(fake_records(names, failing=(), spec=BATCHNORM), STEPS, LR, BATCHNORM, SEEDS)
    titles = [p.title for p in report.cards[names[0]][0]]
    assert titles == [
        "layers.0 Dense(8): parameter norm",
        "layers.0 Dense(8): gradient norm",
        "layers.1 BatchNorm: parameter norm",
        "layers.1 BatchNorm: gradient norm",
        "layers.1 BatchNorm: running statistics (norm)",
        "layers.3 Dense(8), frozen: parameter norm",
        "layers.4 BatchNorm, frozen: parameter norm",
        "layers.4 BatchNorm, frozen: running statistics (norm)",
        "layers.6 Dense(1): parameter norm",
        "layers.6 Dense(1): gradient norm",
    ]
    for name in names:
        frozen = panel(report, name, "layers.3 Dense(8), frozen: parameter norm")
        assert len(set(series(frozen, "weight"))) == 1, "a frozen layer's norm never moves"
        statistics = panel(report, name, "layers.4 BatchNorm, frozen: running statistics (norm)")
        reference = series(statistics, f"{tr.ORACLE}: running mean")
        np.testing.assert_allclose(series(statistics, "running mean"), reference, rtol=10 * NUDGE)
        moves = len(set(reference)) > 1
        expected = tr.conventions_for(BATCHNORM, name).frozen_batchnorm == "training"
        assert moves == expected, f"{name}: the frozen BatchNorm's statistics moved={moves}"
        assert statistics.note.startswith(
            f"frozen: {'updated' if expected else 'not updated'}, as declared; max deviation "
        )
        updated = panel(report, name, "layers.1 BatchNorm: running statistics (norm)")
        assert len(set(series(updated, "running variance"))) > 1
    assert len(report.references) == 2 and report.budget is None and report.sharing == {}
    assert "Why share" not in page_module.render_html(report)
    state_column = report.parity.headers.index("state listed")
    assert {row[state_column] for row in report.parity.rows} == {"4"}


def test_a_tied_batchnorm_reads_its_statistics_through_the_shared_position():
    report = report_of(NAMES[:1], failing=(), spec=TIED_BATCHNORM)
    titles = [p.title for p in report.cards[NAMES[0]][0]]
    assert "layers.1 = layers.4 BatchNorm: running statistics (norm)" in titles
    assert "layers.1 = layers.4: each use's scale gradient" in titles


def test_each_backends_loss_deviation_gets_a_panel_on_one_scale():
    report = report_of()
    panels = page_module.deviation_panels(report)
    assert [p.title for p in panels] == [name for name in NAMES if name != NAMES[1]]
    assert len({p.y_range for p in panels}) == 1 and all(p.log for p in panels)
    for p in panels:
        record = report.records[p.title]
        expected = tr.deviation(
            record["watched"]["losses"], report.references[tr.NO_CONVENTIONS].watched.losses
        )
        np.testing.assert_allclose(p.series[0].values, expected, rtol=1e-12, err_msg=p.title)
        assert 0 < max(expected) < 1e-6, "float32-sized: the loss itself would be a different plot"
        assert p.rules == ((tr.LOSS_PARITY_RTOL, "the suite's tolerance, 1e-05"),)


def test_an_exact_match_is_a_gap_not_a_zero_on_the_log_scale():
    record = fake_record(NAMES[0])
    record["watched"]["losses"] = list(_oracle_record("tied", tr.NO_CONVENTIONS)["watched"]["losses"])
    report = tr.build_report({NAMES[0]: record}, STEPS, LR, TIED, SEEDS)
    (p,) = page_module.deviation_panels(report)
    assert all(math.isnan(v) for v in p.series[0].values) and p.note == "identical at every step"


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


# -- "why share": over seeds, with an interval --------------------------------------------------------------
def test_t_quantiles():
    assert tr.t_quantile(4) == 2.776
    assert tr.t_quantile(30) == 2.042
    assert tr.t_quantile(60) == pytest.approx(2.000, abs=0.001)  # tables: 2.000
    assert tr.t_quantile(120) == pytest.approx(1.980, abs=0.001)  # tables: 1.980


def test_the_interval_is_students_t_over_the_seeds():
    interval = tr.Interval.of([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)
    assert (interval.mean, interval.low, interval.high) == pytest.approx((3.0, 3.0 - half, 3.0 + half))
    with pytest.raises(ValueError, match="at least 2"):
        tr.Interval.of([1.0])


def test_the_interval_of_loss_ratios_is_taken_on_their_logarithm():
    """Loss ratios multiply: the interval is the t-interval of log(tied / untied), mapped back, so
    it never reaches below -100% however far apart the seeds are."""
    interval = tr.Interval.of_ratios([2.0, 8.0])
    assert interval.mean == pytest.approx(3.0)  # the geometric mean, 4, minus 1
    assert interval.values == (1.0, 7.0)
    wild = tr.Interval.of_ratios([0.5, 20.0, 3.0, 1.1, 9.0])
    assert -1.0 < wild.low < 0.0 < wild.high, wild
    small = tr.Interval.of_ratios([1.001, 0.999, 1.002])  # close to the plain interval of the changes
    plain = tr.Interval.of([0.001, -0.001, 0.002])
    assert (small.low, small.high) == pytest.approx((plain.low, plain.high), abs=1e-5)


@pytest.mark.parametrize(
    ("values", "verdict"),
    [
        ([-0.020, -0.021, -0.019, -0.022, -0.018], "tied"),
        ([0.020, 0.021, 0.019, 0.022, 0.018], "untied"),
        ([0.0001, -0.0002, 0.0003, 0.0, -0.0001], "same"),
        # one seed at -0.16% (what a single run once reported as a win for sharing): undecided
        ([-0.0016, 0.012, -0.009, 0.004, -0.011], "unclear"),
        ([-0.02, math.nan, -0.02, -0.02, -0.02], "unclear"),  # a diverged seed decides nothing
    ],
)
def test_the_verdict_needs_the_whole_interval(values, verdict):
    assert tr.Interval.of(values).verdict == verdict


@pytest.mark.parametrize(
    ("values", "phrase"),
    [
        ([-0.020, -0.021, -0.019, -0.022, -0.018], "sharing generalizes better here"),
        ([0.020, 0.021, 0.019, 0.022, 0.018], "sharing pays off in size only"),
        ([0.0001, -0.0002, 0.0003, 0.0, -0.0001], "the tie costs nothing that matters"),
        (
            [-0.0016, 0.012, -0.009, 0.004, -0.011],
            "5 seeds cannot tell which model predicts unseen data better",
        ),
    ],
)
def test_the_verdict_sentence_follows_the_interval(values, phrase):
    assert phrase in tr.verdict_sentence(tr.Interval.of(values), 5, 72)


def test_the_conclusion_quotes_the_intervals_and_every_seed():
    report = report_of()
    oracle = report.sharing[tr.ORACLE]
    for text in (
        tr.interval_text(oracle.held_out),
        tr.interval_text(oracle.train),
        ", ".join(tr.signed(v) for v in oracle.held_out.values),
        "Tying saves 37% of the parameters (121 vs 193 scalars",
        f"Over {SEEDS} seeds",
        f"Every backend's own {SEEDS} seeds",
    ):
        assert text in report.conclusion, f"{text!r} missing from: {report.conclusion}"
    assert tr.verdict_sentence(oracle.held_out, SEEDS, 72) in report.conclusion


def test_a_tied_batchnorm_is_answered_under_each_backends_conventions():
    """With a BatchNorm, each set of declared conventions gets its own oracle and its own verdict,
    named with the backends that declare it."""
    report = report_of(NAMES, failing=(), spec=TIED_BATCHNORM)
    groups: dict[Conventions, list[str]] = {}
    for name in NAMES:
        groups.setdefault(tr.conventions_for(TIED_BATCHNORM, name), []).append(name)
    assert list(report.references) == list(groups) and len(groups) > 1
    for conventions, names in groups.items():
        label = f"{tr.ORACLE} ({', '.join(names)})"
        held = report.sharing[label].held_out
        expected = f"by the {label} with {tr.describe_conventions(conventions)}, {tr.interval_text(held)}"
        assert expected in report.conclusion, f"{expected!r} missing from: {report.conclusion}"
        assert f"Why share ({label}): held-out loss" in " ".join(report.summary)


def test_each_seed_is_the_oracles_fit_of_that_seeds_final_parameters():
    report = report_of()
    held_x, held_y = regression_data(TIED, held_out=HELD_OUT_SAMPLES)
    record = report.records[NAMES[0]]
    for run, fit in zip(record["seed_runs"], report.sharing[NAMES[0]].fits, strict=True):
        assert fit.held_out_tied == pytest.approx(mse(TIED, run["tied"]["final_params"], held_x, held_y))
        assert fit.held_out_untied == pytest.approx(
            mse(TIED.untied(), run["untied"]["final_params"], held_x, held_y)
        )
    assert len(report.seeds_table.rows) == SEEDS


@pytest.mark.parametrize("loser", ["tied", "untied"])
def test_the_backends_verdict_follows_its_records(loser):
    """Spoil one model's final parameters in every seed of one backend: that backend's verdict
    names the other model, and the conclusion says it disagrees with the oracle."""
    records = fake_records(NAMES[:2], failing=())
    records[NAMES[1]] = spoiled(records[NAMES[1]], loser)
    report = tr.build_report(records, STEPS, LR, TIED, SEEDS)
    winner = "untied" if loser == "tied" else "tied"
    assert report.sharing[NAMES[1]].held_out.verdict == winner
    assert report.sharing[NAMES[0]].held_out.verdict == report.sharing[tr.ORACLE].held_out.verdict
    assert f"disagree with the oracle on: {NAMES[1]} ({tr.VERDICT_WORDS[winner]})" in report.conclusion
    row = next(row for row in report.sharing_table.rows if row[0] == NAMES[1])
    assert row[5] == tr.VERDICT_WORDS[winner]


def test_the_interval_chart_has_the_oracle_and_every_finished_backend():
    chart = page_module.interval_chart(report_of())
    assert [row.label for row in chart.rows] == [tr.ORACLE] + [n for n in NAMES if n != NAMES[1]]
    oracle = report_of().sharing[tr.ORACLE].held_out
    assert chart.rows[0].points == pytest.approx(tuple(100 * v for v in oracle.values))


def test_percent_never_prints_an_exponent():
    assert [tr.percent(x) for x in (0.3731, -0.0071, 0.00043, 1.5, 0.0)] == [
        "37%",
        "0.71%",
        "0.043%",
        "150%",
        "0%",
    ]
    assert [tr.signed(x) for x in (-0.0071, 0.018)] == ["-0.71%", "+1.8%"]


VALID = ", ".join(MODELS)


# -- the command line -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "tide"], f"--model='tide' is not a model (did you mean tied?); valid: {VALID}"),
        (["--seeds", "1"], "--seeds=1, but should be a whole number >= 2"),
        (["--steps", "0"], "--steps=0, but should be a whole number >= 1"),
        (["--lr", "nan"], "--lr=nan, but should be a positive, finite number"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
    status = cli.main(["train", "--backends", NAMES[0], "--out-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err == f"paramparity: error: {message}\n"
    assert list(tmp_path.iterdir()) == [], "nothing ran, nothing written"


# -- progress ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [1, 7, 100, 400])
def test_progress_reports_at_most_once_per_tenth(total):
    lines: list[str] = []
    show = progress_ticks(total, lines.append)
    for done in range(1, total + 1):
        show(done, f"step {done}")
    assert 0 < len(lines) <= 10
    assert lines[-1].endswith(f"step {total}") and "100%" in lines[-1]
