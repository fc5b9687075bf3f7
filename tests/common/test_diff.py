"""The diff's merge and rendering, on framework-free records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from common.commands import diff
from common.commands.claims import BOOK_CLAIMS, MEASURES, evaluate
from common.config import backend_names
from common.declarations import declaration
from common.errors import UsageError
from tests.common.records import failed_record, make_record

BACKENDS = backend_names()
FIRST, SECOND, THIRD = BACKENDS[:3]


def row(doc, label):
    return next(r for r in doc["rows"] if r["label"] == label)


def test_every_row_extracts_from_a_full_record():
    doc = diff.merge({name: make_record(name) for name in BACKENDS})
    errors = [(r["label"], b, c) for r in doc["rows"] for b, c in r["cells"].items() if "error" in c]
    assert errors == []
    assert doc["failed"] == []


def test_agreement_is_per_row():
    records = {name: make_record(name) for name in BACKENDS}
    records[SECOND] = make_record(SECOND, **{"models.tied.facts.layer_list_length": 9})
    doc = diff.merge(records)
    assert row(doc, "layer list length")["agree"] is False
    assert row(doc, "weight layout")["agree"] is True


def test_a_failed_backend_keeps_its_column_and_hides_nothing():
    records = {name: make_record(name) for name in BACKENDS}
    records[SECOND] = failed_record(SECOND, "probe exited 1: boom")
    doc = diff.merge(records)
    assert doc["failed"] == [SECOND]
    others = [b for b in BACKENDS if b != SECOND]
    for r in doc["rows"]:
        assert r["cells"][SECOND] == {"error": "probe exited 1: boom"}
        assert all("value" in r["cells"][b] for b in others), r["label"]
    for render in (diff.render_terminal, diff.render_markdown, diff.render_html):
        text = render(doc)
        assert "boom" in text and all(b in text for b in BACKENDS)
    assert {c["status"] for c in doc["claims"] if c["backend"] == SECOND} == {"not run"}


def test_claims_are_evaluated_not_assumed():
    holds = make_record(
        FIRST,
        **{"models.tied.facts.layer_list_length": 6, "models.tied.facts.unique_layer_objects": 6},
    )
    breaks = make_record(
        FIRST,
        **{"models.tied.facts.layer_list_length": 7, "models.tied.facts.unique_layer_objects": 6},
    )
    keras_claim = next(c for c in BOOK_CLAIMS if "duplicate" in c.quote)
    assert evaluate(keras_claim, holds).status == "holds"
    assert evaluate(keras_claim, breaks).status == "does not hold"


def test_every_claim_names_a_known_measure_and_a_declared_tab():
    tabs = {declaration(name).book_tab for name in BACKENDS}
    for claim in BOOK_CLAIMS:
        assert claim.measure in MEASURES and (claim.tab is None or claim.tab in tabs), claim


def test_every_backend_is_held_to_its_tab_and_to_the_generic_claims():
    doc = diff.merge({name: make_record(name) for name in BACKENDS})
    for name in BACKENDS:
        mine = [c for c in doc["claims"] if c["backend"] == name]
        expected = [c for c in BOOK_CLAIMS if c.tab in (None, declaration(name).book_tab)]
        assert len(mine) == len(expected) and any(c["tab"] == "all" for c in mine), name


def test_json_is_deterministic_apart_from_timing():
    records = {name: make_record(name) for name in (FIRST, THIRD)}
    first = json.loads(diff.render_json(diff.merge(records)))
    records[FIRST]["timing"] = {"seconds": 99.0}
    second = json.loads(diff.render_json(diff.merge(records)))
    for doc in (first, second):
        for record in doc["records"].values():
            record.pop("timing")
    assert first == second
    assert diff.render_json(diff.merge(records)) == diff.render_json(diff.merge(records))


def test_html_is_one_self_contained_page():
    page = diff.render_html(diff.merge({FIRST: make_record(FIRST)}))
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert "src=" not in page and "href=" not in page


def test_write_report(tmp_path):
    doc = diff.merge({FIRST: make_record(FIRST)})
    for fmt, ext in diff.EXTENSIONS.items():
        assert diff.write_report(doc, fmt, tmp_path).name == f"diff.{ext}"
    assert json.loads((tmp_path / "diff.json").read_text())["backends"] == [FIRST]


FAKE_PROBE = """
import json, sys
from tests.common.records import make_record
json.dump(make_record(sys.argv[1]), open(sys.argv[2], "w"))
"""


def test_run_probes_reports_every_backend_even_when_some_fail(tmp_path):
    """One probe works, one crashes without a record, one cannot even start."""

    def command(backend: str, out: Path) -> list[str]:
        if backend == FIRST:
            return [sys.executable, "-c", FAKE_PROBE, backend, str(out)]
        if backend == SECOND:
            return [sys.executable, "-c", f"raise SystemExit('{SECOND} exploded')"]
        raise UsageError(f"cannot create .venvs/{backend}")

    log = tmp_path / "progress.txt"
    with log.open("w") as stream:
        records = diff.run_probes([FIRST, SECOND, THIRD], command, stream=stream)
    doc = diff.merge(records)
    assert doc["backends"] == [FIRST, SECOND, THIRD]
    assert doc["failed"] == sorted([SECOND, THIRD])
    assert f"{SECOND} exploded" in records[SECOND]["error"]
    assert f"cannot create .venvs/{THIRD}" in records[THIRD]["error"]
    progress = log.read_text()
    assert (
        f"[{FIRST}] done" in progress and f"[{SECOND}] FAILED" in progress and f"[{THIRD}] FAILED" in progress
    )


def test_unknown_backend_is_a_usage_error():
    from common.commands.cli import main

    assert main(["diff", "--backends", f"{FIRST},caffe"]) == 2


def test_bad_format_is_refused(capsys):
    from common.commands.cli import main

    with pytest.raises(SystemExit) as info:
        main(["diff", "--format", "pdf"])
    assert info.value.code == 2
