"""The diff's behaviour probe, run in this backend's environment."""

from __future__ import annotations

import pytest

from common.commands import diff
from common.commands.claims import BOOK_CLAIMS, applies_to
from common.commands.probe import probe
from common.declarations import declaration


@pytest.fixture(scope="module")
def record(backend):
    return probe(backend.name)


def test_probe_succeeds_and_every_row_renders(backend, record):
    assert record["ok"], record.get("error")
    doc = diff.merge({backend.name: record})
    errors = [
        (row["label"], row["cells"][backend.name])
        for row in doc["rows"]
        if "error" in row["cells"][backend.name]
    ]
    assert errors == []


def test_every_claim_about_this_backend_is_decided(backend, record):
    doc = diff.merge({backend.name: record})
    statuses = {c["quote"]: c["status"] for c in doc["claims"]}
    tab = declaration(backend.name).book_tab
    assert len(statuses) == len([c for c in BOOK_CLAIMS if applies_to(c, tab)])
    assert set(statuses.values()) <= {"holds", "does not hold"}, statuses


def test_probe_is_deterministic_apart_from_timing(backend, record):
    again = probe(backend.name)
    first, second = dict(record), dict(again)
    first.pop("timing"), second.pop("timing")
    assert diff.render_json({"r": first}) == diff.render_json({"r": second})


def test_numbers_match_the_oracle(record):
    for model, result in record["models"].items():
        worst = max(result["max_abs_diff"].values())
        assert worst < 1e-5, f"{model}: max |delta| vs oracle={worst}, but should be < 1e-5"
