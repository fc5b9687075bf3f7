"""The diff's renderings fit their medium and lose no value: the terminal at any width, Markdown
through a real Markdown renderer, HTML as one self-contained page."""

from __future__ import annotations

import html
import io
import re
import subprocess
import sys

import pytest
from markdown_it import MarkdownIt
from rich.console import Console

from common.commands import diff
from common.commands.textable import fit_columns, min_width, pieces, wrap
from common.config import backend_names
from common.envs import ROOT
from tests.common.records import failed_record, make_record, token, varied_records

BACKENDS = backend_names()


def varied_doc(failed: str | None = None):
    records = varied_records(BACKENDS)
    if failed:
        records[failed] = failed_record(failed, "ImportError: cannot import name 'x' from 'y'")
    return diff.merge(records)


def value_lines(doc):
    """Every line of every value the table shows, with the backend it belongs to."""
    for row in doc["rows"]:
        for backend, cell in row["cells"].items():
            for line in diff.cell_lines(cell):
                yield row["label"], backend, line


def missing_words(text: str, doc) -> list:
    """Values some word of which is not in ``text`` (wrapping may split a value, never a word)."""
    words = set(re.split(r"\s+", text))
    joined = " ".join(text.split())
    missing = []
    for label, backend, line in value_lines(doc):
        for piece in pieces(line):
            if piece.strip() and piece.strip() not in joined and piece.strip() not in words:
                missing.append((label, backend, piece))
    return missing


# -- wrapping --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, width, expected",
    [
        ("layers.0.weight", 10, ["layers.0.", "  weight"]),
        ("params/layers_0/kernel", 12, ["params/", "  layers_0/", "  kernel"]),
        ("worst grad layers.6.weight: 7e-08", 26, ["worst grad", "  layers.6.weight: 7e-08"]),
        ("forward: 1.7e-09", 10, ["forward:", "  1.7e-09"]),
        ("a\nb", 10, ["a", "b"]),
    ],
)
def test_wrap_breaks_at_separators_only(text, width, expected):
    assert wrap(text, width) == expected


def test_wrap_never_breaks_a_word_that_fits_its_min_width():
    for text in (
        "torch.nn.parameter.Parameter",
        "0.weight <UninitializedParameter>",
        "mlp_dense0_weight (8, -1)",
    ):
        lines = wrap(text, min_width(text))
        assert all(len(line) <= min_width(text) for line in lines)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_fit_columns_gives_up_when_the_floors_do_not_fit():
    columns = [["a" * 30], ["b " * 20], ["c " * 20]]
    assert fit_columns(columns, 50, [24, 20, 20]) is None
    widths = fit_columns(columns, 100, [24, 20, 20])
    assert widths is not None and sum(widths) <= 100 and widths[0] == 30


# -- the terminal ----------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [40, 60, 80, 100, 120, 160, 240])
def test_the_terminal_fits_its_width_and_shows_every_value(width):
    doc = varied_doc(failed=BACKENDS[1])
    text = diff.render_terminal(doc, width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert missing_words(text, doc) == []
    for backend in BACKENDS:
        assert backend in text
        if backend != BACKENDS[1]:
            assert token(backend) in text, f"{backend}'s value is missing at width {width}"


@pytest.mark.parametrize("columns", ["80", "100"])
def test_COLUMNS_sets_the_width(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    doc = varied_doc()
    text = diff.render_terminal(doc)
    assert max(len(line) for line in text.splitlines()) <= int(columns)
    assert missing_words(text, doc) == []


def test_COLUMNS_changes_the_output_of_the_command(tmp_path):
    saved = tmp_path / "diff.json"
    saved.write_text(diff.render_json(varied_doc()))

    def run(columns: str) -> str:
        env = {"COLUMNS": columns, "PATH": "/usr/bin:/bin"}
        command = [sys.executable, "-m", "common", "diff", "--from", str(saved)]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, check=True).stdout

    narrow, wide = run("80"), run("200")
    assert narrow != wide
    assert max(map(len, narrow.splitlines())) <= 80 and max(map(len, wide.splitlines())) <= 200


def test_a_wide_terminal_gets_the_full_table_and_a_narrow_one_the_stacked_layout():
    doc = varied_doc()
    wide = diff.render_terminal(doc, 400)
    header = next(line for line in wide.splitlines() if line.startswith("behaviour"))
    assert all(name in header for name in BACKENDS)
    narrow = diff.render_terminal(doc, 60)
    assert not any(all(name in line for name in BACKENDS) for line in narrow.splitlines())
    assert f"    {BACKENDS[0]}: {token(BACKENDS[0])}" in narrow


def test_stacked_rows_share_a_line_when_backends_agree():
    doc = diff.merge({name: make_record(name) for name in BACKENDS})
    narrow = diff.render_terminal(doc, 60)
    assert "    all: (out, in)" in narrow


def test_no_name_breaks_inside_a_word():
    doc = varied_doc()
    for width in (60, 80, 100):
        text = diff.render_terminal(doc, width)
        for backend in BACKENDS:
            assert f"{backend}_net/" in text
            assert token(backend) in text


# -- markdown --------------------------------------------------------------------------------------
NASTY = "a|b `code` *em* _u_ <UninitializedParameter> & [link](x) \\ #"


def _rendered_markdown(doc) -> str:
    return MarkdownIt("commonmark").enable("table").render(diff.render_markdown(doc))


def _text(page: str) -> str:
    """The text a reader sees: inline tags dropped, the others end a line."""
    inline = re.sub(r"</?(wbr|span)\b[^>]*>", "", page)
    return html.unescape(re.sub(r"<[^>]+>", "\n", inline))


def test_markdown_shows_every_value_through_a_markdown_renderer():
    records = varied_records(BACKENDS)
    records[BACKENDS[0]]["mechanisms"]["lazy"] = NASTY
    records[BACKENDS[0]]["mechanisms"]["tie"] = "first line\nsecond line"
    doc = diff.merge(records)
    page = _rendered_markdown(doc)
    text = _text(page)
    for label, backend, line in value_lines(doc):
        assert line in text, (label, backend, line)
    assert "&lt;UninitializedParameter&gt;" in page and "<UninitializedParameter>" not in page
    assert "<em>" not in page and "<code>" not in page and "<a " not in page


def test_markdown_tables_keep_their_columns():
    records = varied_records(BACKENDS)
    records[BACKENDS[0]]["mechanisms"]["lazy"] = NASTY
    page = _rendered_markdown(diff.merge(records))
    for table in re.findall(r"<table>.*?</table>", page, re.S):
        widths = {len(re.findall(r"<t[hd][ >]", tr)) for tr in re.findall(r"<tr>.*?</tr>", table, re.S)}
        assert len(widths) == 1, widths


def test_markdown_claims_and_failures():
    doc = varied_doc(failed=BACKENDS[1])
    text = _text(_rendered_markdown(doc))
    for row in diff.claim_rows(doc):
        assert row.quote in text
        for cell in row.cells.values():
            assert cell in text
    assert text.count("cannot import name 'x' from 'y'") == 1


# -- html ------------------------------------------------------------------------------------------
def test_html_is_one_self_contained_page():
    page = diff.render_html(diff.merge({BACKENDS[0]: make_record(BACKENDS[0])}))
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "src=" not in page and "@import" not in page
    links = re.findall(r"href=['\"]([^'\"]*)", page)
    assert links and all(link.startswith("#") for link in links), "only in-page links: the contents bar"
    anchors = set(re.findall(r"id=['\"]([^'\"]*)", page))
    assert {link[1:] for link in links} <= anchors, "every contents link lands on its section"


def test_html_fits_by_construction():
    page = diff.render_html(varied_doc())
    assert "table-layout:fixed" in page and "width:100%" in page
    assert "overflow-wrap:anywhere" in page and "@media (max-width:900px)" in page
    assert "<meta name='viewport'" in page


def test_html_escapes_every_value_and_shows_it():
    records = varied_records(BACKENDS)
    records[BACKENDS[0]]["mechanisms"]["lazy"] = NASTY + "<script>alert(1)</script>"
    doc = diff.merge(records)
    page = diff.render_html(doc)
    assert "<script>" not in page and "<UninitializedParameter>" not in page
    text = _text(page)
    for label, backend, line in value_lines(doc):
        assert line in text, (label, backend, line)


def test_html_names_break_at_separators():
    page = diff.render_html(varied_doc())
    assert f"{BACKENDS[0]}_<wbr>net/<wbr>layers.<wbr>" in page
    assert "1.<wbr>7e" not in page


# -- the answer first --------------------------------------------------------------------------------
def _first_differing(doc) -> str:
    row = next(r for r in doc["rows"] if r["differs"])
    return f"{row['section']} / {row['label']}"


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "html"])
def test_the_verdict_and_the_rows_that_differ_come_first(fmt):
    """At 100 columns, the first 15 lines hold the summary (backends, claims, how many behaviours
    differ) and the first rows that differ; the legend and the tables come after them."""
    doc = varied_doc(failed=BACKENDS[1])
    if fmt == "terminal":
        lines = diff.render_terminal(doc, 100).splitlines()
    elif fmt == "markdown":
        lines = [line for line in _text(_rendered_markdown(doc)).splitlines() if line.strip()]
    else:
        body = diff.render_html(doc).split("<body>", 1)[1]
        lines = [
            html.unescape(re.sub(r"<[^>]+>", "", part)) for part in re.split(r"</(?:p|li|h1|nav)>", body)
        ]
        lines = [line.strip() for line in lines if line.strip()]
    head = "\n".join(lines[:15])
    differing = sum(r["differs"] for r in doc["rows"])
    assert differing > 0, "the fixture must have differing rows"
    assert "Backends: " in head and f"failed: {BACKENDS[1]}" in head
    assert "Book claims:" in head and f"Behaviours: {differing} of" in head
    assert _first_differing(doc) in head
    assert head.index("Behaviours:") < head.index(_first_differing(doc))
    legend = next(i for i, line in enumerate(lines) if "the backends differ in this behaviour" in line)
    first = next(i for i, line in enumerate(lines) if _first_differing(doc) in line)
    assert first < legend, "the rows that differ come before the legend and the tables"


def test_each_differing_row_is_one_line_with_each_value_and_its_backends():
    doc = varied_doc()
    lines = diff.differing_lines(doc)
    assert len(lines) == sum(r["differs"] for r in doc["rows"])
    for line, row in zip(lines, [r for r in doc["rows"] if r["differs"]], strict=True):
        assert "\n" not in line and line.startswith(f"{diff.DIFFERS} {row['section']} / {row['label']}: ")
        assert all(name in line for name in row["cells"])


def test_each_section_is_side_by_side_where_its_table_fits():
    """Short values fit a table at a width where long ones must stack: each section decides."""
    backends = BACKENDS[:3]

    def row(section, label, value):
        cells = {b: {"value": f"{value}-{b}"} for b in backends}
        return {
            "section": section,
            "label": label,
            "kind": "behaviour",
            "cells": cells,
            "differs": True,
            "mark": "*",
        }

    doc = {
        "backends": backends,
        "failed": {},
        "rows": [row("Short", "count", "1"), row("Long", "names", "x" * 150)],
    }
    buffer = io.StringIO()
    Console(file=buffer, width=100, color_system=None).print(diff._behaviour_block(doc, 100))
    lines = buffer.getvalue().splitlines()
    assert any(line.split()[:1] == ["behaviour"] for line in lines), "the short section is a table"
    assert sum(line.strip().startswith("behaviour") for line in lines) == 1, "the long one is not"
    assert any(line.strip().startswith(f"{backends[0]}: xxx") for line in lines), "the long one is stacked"


def test_stacked_claims_list_only_the_backends_they_apply_to():
    """n/a is said once, in the legend: a stacked claim shows no line that says only n/a."""
    doc = varied_doc()
    text = diff.render_terminal(doc, 80)
    claims = text.split(diff.CLAIMS_TITLE.split(" (")[0], 1)[1]
    assert not [
        line for line in claims.splitlines() if line.strip().endswith(": n/a") or line.strip() == "n/a"
    ]
    assert any(row.statuses[b] == "n/a" for row in diff.claim_rows(doc) for b in row.statuses)
