"""The diff's merge, markers, claims, saved records and command line, on framework-free records."""

from __future__ import annotations

import html
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from common.commands import diff
from common.commands.claims import BOOK_CLAIMS, DESCRIBE, MEASURES, STATUSES, applies_to, evaluate
from common.commands.cli import main
from common.config import backend_names
from common.core.expectations import ATOL
from common.declarations import BOOK_TABS, declaration, declarations
from common.envs import ROOT
from common.errors import UsageError
from tests.common.records import failed_record, make_record, varied_records

BACKENDS = backend_names()
FIRST, SECOND, THIRD = BACKENDS[:3]
FRAMEWORKS = sorted({root for d in declarations() for root in d.import_roots})


def row(doc, label):
    return next(r for r in doc["rows"] if r["label"] == label)


def test_every_row_extracts_from_a_full_record():
    doc = diff.merge({name: make_record(name) for name in BACKENDS})
    errors = [(r["label"], b, c) for r in doc["rows"] for b, c in r["cells"].items() if "error" in c]
    assert errors == []
    assert doc["failed"] == {}


# -- markers ---------------------------------------------------------------------------------------
def test_a_real_difference_is_marked_and_only_in_its_row():
    records = {name: make_record(name) for name in BACKENDS}
    records[SECOND] = make_record(SECOND, **{"models.tied.facts.layer_list_length": 9})
    doc = diff.merge(records)
    assert row(doc, "layer list length")["mark"] == diff.DIFFERS
    assert row(doc, "weight layout")["mark"] == ""


def test_float_noise_within_the_oracle_tolerance_is_not_a_difference():
    doc = diff.merge(varied_records(BACKENDS))
    for model in ("mlp", "tied", "nest"):
        oracle = row(doc, model)
        texts = {json.dumps(cell["value"]) for cell in oracle["cells"].values()}
        assert len(texts) == len(BACKENDS), "the shown values differ"
        assert oracle["mark"] == "" and not oracle["differs"], oracle


def test_a_number_off_the_oracle_is_a_difference():
    records = {name: make_record(name) for name in BACKENDS}
    records[SECOND]["models"]["mlp"]["max_abs_diff"]["forward"] = 1000 * ATOL
    assert row(diff.merge(records), "mlp")["mark"] == diff.DIFFERS


def test_versions_are_context_and_never_marked():
    doc = diff.merge(varied_records(BACKENDS))
    for label in ("framework", "python", "numpy"):
        assert row(doc, label)["kind"] == diff.CONTEXT and row(doc, label)["mark"] == "", label
    assert len({json.dumps(c) for c in row(doc, "framework")["cells"].values()}) == len(BACKENDS)


def test_a_row_compares_its_behaviour_not_its_spelling():
    records = {name: make_record(name) for name in BACKENDS}
    records[SECOND]["models"]["tied"]["facts"]["layer_list_call"] = "list(net)"
    assert row(diff.merge(records), "layer list length")["mark"] == ""


def test_a_value_a_record_lacks_is_marked_with_its_cause():
    records = {name: make_record(name) for name in BACKENDS}
    del records[SECOND]["mechanisms"]["tie"]
    tie = row(diff.merge(records), "tie mechanism")
    assert tie["mark"] == diff.LACKS and "'tie'" in tie["cells"][SECOND]["error"]


@pytest.mark.parametrize("render", [diff.render_terminal, diff.render_markdown, diff.render_html])
def test_every_marker_is_explained_in_every_format(render):
    text = render(diff.merge(varied_records(BACKENDS)))
    for mark, meaning in {**diff.LEGEND, **diff.CLAIMS_LEGEND}.items():
        plain = " ".join(html.unescape(text).replace("\\", "").split())
        assert meaning.split("(")[0].strip() in plain, (mark, meaning)
    assert "context" in text


def test_json_carries_the_legend():
    doc = json.loads(diff.render_json(diff.merge({FIRST: make_record(FIRST)})))
    assert set(doc["legend"]) >= {diff.DIFFERS, diff.LACKS, diff.CLAIM_FAILS}


# -- capabilities ------------------------------------------------------------------------------------
def test_the_capability_row_comes_from_the_declaration_when_the_record_lacks_it():
    doc = diff.merge({name: make_record(name) for name in BACKENDS})
    lazy = row(doc, "lazy input size")
    for name in BACKENDS:
        declared = declaration(name).capabilities["lazy_input_size"]
        assert lazy["cells"][name]["value"] == f"{'yes' if declared.value else 'no'}: {declared.reason}"


def test_the_capability_row_prefers_the_record_and_compares_the_value_only():
    records = {name: make_record(name) for name in BACKENDS}
    for k, name in enumerate(BACKENDS):
        records[name]["capabilities"] = {"lazy_input_size": {"value": True, "reason": f"reason {k}"}}
    assert row(diff.merge(records), "lazy input size")["mark"] == ""
    records[FIRST]["capabilities"] = {"lazy_input_size": {"value": False, "reason": "eager only"}}
    lazy = row(diff.merge(records), "lazy input size")
    assert lazy["cells"][FIRST]["value"] == "no: eager only" and lazy["mark"] == diff.DIFFERS


# -- failed backends -------------------------------------------------------------------------------
def test_a_failed_backend_keeps_an_empty_column_and_its_cause_is_said_once():
    records = varied_records(BACKENDS)
    records[SECOND] = failed_record(SECOND, "ImportError: boom-cause")
    doc = diff.merge(records)
    assert doc["failed"] == {SECOND: "ImportError: boom-cause"}
    assert doc["backends"] == list(BACKENDS)
    for r in doc["rows"]:
        assert SECOND not in r["cells"]
        assert all("value" in r["cells"][b] for b in BACKENDS if b != SECOND), r["label"]
    for render in (diff.render_terminal, diff.render_markdown, diff.render_html):
        text = html.unescape(render(doc)).replace("\\", "")  # as read, Markdown escapes undone
        assert text.count("boom-cause") == 1, render.__name__
        assert all(b in text for b in BACKENDS)
    assert {c["status"] for c in doc["claims"] if c["backend"] == SECOND} == {"not evaluated"}


def test_the_failed_backends_line_is_above_the_table():
    records = varied_records(BACKENDS)
    records[THIRD] = failed_record(THIRD, "exited 1 without a record: Killed")
    text = diff.render_terminal(diff.merge(records), 200)
    assert text.index(f"{THIRD} failed: exited 1 without a record: Killed") < text.index("[The 4->8->1 MLP]")


# -- claims ----------------------------------------------------------------------------------------
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


def test_every_claim_names_a_known_measure_a_description_and_a_book_tab():
    for claim in BOOK_CLAIMS:
        assert claim.measure in MEASURES and claim.measure in DESCRIBE, claim
        assert claim.tab is None or claim.tab in BOOK_TABS, claim


@pytest.mark.parametrize(
    "native_format",
    [
        lambda name: "params/layers_" + name.split(".")[1] + "/" + name.split(".")[2],  # Flax linen
        lambda name: name.removeprefix("layers."),  # torch state_dict
        lambda name: ".layers[" + name.split(".")[1] + "]." + name.split(".")[2],  # an Equinox key path
        lambda name: name.replace(".", "_"),  # anything at all
    ],
    ids=["flax", "torch", "equinox", "other"],
)
def test_the_listing_claim_reads_canonical_names_never_a_native_format(native_format):
    """len(params['params']) == 3 counts the layers the listing holds, whatever the names look
    like; a tie listed under a second name of its own is one more entry, so the claim fails."""
    claim = next(c for c in BOOK_CLAIMS if c.measure == "len(params['params']) (tied)")
    record = make_record(FIRST)
    tied = record["models"]["tied"]
    for p in tied["params"]:
        p["native_name"] = native_format(p["name"])
    tied["facts"]["listing_names"] = [p["native_name"] for p in tied["params"]]
    assert evaluate(claim, record).status == "holds"
    tied["facts"]["listing_names"] += [native_format("layers.4.weight"), native_format("layers.4.bias")]
    assert evaluate(claim, record).status == "does not hold"


def test_a_record_without_a_measurement_is_not_evaluated_and_says_why():
    record = make_record(FIRST)
    del record["models"]["tied"]["ties"]
    claim = next(c for c in BOOK_CLAIMS if c.measure == "tied gradient == sum over its uses")
    verdict = evaluate(claim, record)
    assert verdict.status == "not evaluated" and "'ties'" in verdict.detail


def test_every_backend_is_held_to_its_tab_and_to_the_generic_claims():
    doc = diff.merge({name: make_record(name) for name in BACKENDS})
    for name in BACKENDS:
        mine = [c for c in doc["claims"] if c["backend"] == name]
        expected = [c for c in BOOK_CLAIMS if c.tab in (None, declaration(name).book_tab)]
        assert len(mine) == len(expected) and any(c["tab"] == "all" for c in mine), name


def test_one_claim_row_per_claim_with_a_cell_per_backend():
    doc = diff.merge({name: make_record(name) for name in BACKENDS})
    rows = diff.claim_rows(doc)
    assert [r.quote for r in rows] == [c.quote for c in BOOK_CLAIMS]
    for r, claim in zip(rows, BOOK_CLAIMS, strict=True):
        assert list(r.cells) == list(BACKENDS)
        assert set(r.statuses.values()) <= set(STATUSES)
        for name in BACKENDS:
            applies = applies_to(claim, declaration(name).book_tab)
            assert (r.statuses[name] == "n/a") is (not applies), (claim.quote, name)
    wide = diff.render_terminal(doc, 2000)  # wide enough that no claim wraps
    for claim in BOOK_CLAIMS:
        assert wide.count(claim.quote) == 1, claim.quote


def test_a_verdict_reads_without_contradiction():
    tab = next(c.tab for c in BOOK_CLAIMS if c.measure == "parameters exist before the first forward")
    name = next((b for b in BACKENDS if declaration(b).book_tab == tab), None)
    if name is None:
        pytest.skip(f"no backend answers to the {tab} tab")
    doc = diff.merge({name: make_record(name, **{"models.mlp.unbuilt": {}})})
    text = diff.render_terminal(doc, 400)
    assert "observed: no parameters before the first forward (holds)" in text
    assert "false" not in text.lower().split("the book, checked")[1]


def test_the_footer_counts_each_outcome_separately():
    nothing = diff.merge({name: failed_record(name) for name in BACKENDS})
    line = diff.summary_lines(nothing)[0]
    checks = len(nothing["claims"])
    assert f"0 hold, 0 do not hold, {checks} not evaluated" in line
    some = diff.merge({name: make_record(name) for name in BACKENDS})
    counts = some["claim_counts"]
    assert sum(counts.values()) == len(some["claims"]) and counts["not evaluated"] == 0


def test_a_claim_that_does_not_hold_is_marked_and_the_mark_explained():
    records = {
        name: make_record(name, **{"models.mlp.grad_state_before_backward": "??"}) for name in BACKENDS
    }
    doc = diff.merge(records)
    rows = diff.claim_rows(doc)
    assert any(r.mark == diff.CLAIM_FAILS for r in rows)
    assert all((r.mark == diff.CLAIM_FAILS) is ("does not hold" in r.statuses.values()) for r in rows)
    text = diff.render_terminal(doc, 200)
    assert f"{diff.CLAIM_FAILS} = {diff.CLAIMS_LEGEND[diff.CLAIM_FAILS]}" in " ".join(text.split())


# -- records, files and the command ----------------------------------------------------------------
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


def test_write_report(tmp_path):
    doc = diff.merge({FIRST: make_record(FIRST)})
    for fmt, ext in diff.EXTENSIONS.items():
        assert diff.write_report(doc, fmt, tmp_path).name == f"diff.{ext}"
    assert json.loads((tmp_path / "diff.json").read_text())["backends"] == [FIRST]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "diff.json"
    path.write_text("old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        diff.write_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["diff.json"]


def _saved(tmp_path: Path, name: str, records) -> Path:
    path = tmp_path / name
    path.write_text(diff.render_json(diff.merge(records)))
    return path


def test_from_merges_files_later_ones_winning(tmp_path):
    one = _saved(tmp_path, "one.json", {FIRST: make_record(FIRST), SECOND: failed_record(SECOND)})
    two = _saved(tmp_path, "two.json", {SECOND: make_record(SECOND, **{"versions.framework": "9.9"})})
    records = diff.load_records([one, two])
    assert set(records) == {FIRST, SECOND} and records[SECOND]["versions"]["framework"] == "9.9"
    assert diff.load_records([two, one])[SECOND]["ok"] is False


def test_from_takes_a_single_probe_record_and_skips_undeclared_backends(tmp_path):
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps(make_record(FIRST)))
    doc_file = tmp_path / "diff.json"
    doc_file.write_text(json.dumps({"records": {"caffe": make_record("caffe"), THIRD: make_record(THIRD)}}))
    warnings = io.StringIO()
    assert set(diff.load_records([probe, doc_file], warn=warnings)) == {FIRST, THIRD}
    assert "caffe" in warnings.getvalue()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not JSON"),
        ('{"rows": []}', "neither a diff.json"),
        ('{"records": {"x": 1}}', "not an object"),
    ],
)
def test_from_refuses_a_bad_file_with_its_name(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as info:
        diff.load_records([path])
    assert str(path) in str(info.value)


def test_format_all_from_saved_records_writes_every_format(tmp_path, capsys):
    one = _saved(tmp_path, "one.json", {FIRST: make_record(FIRST)})
    two = _saved(tmp_path, "two.json", {THIRD: make_record(THIRD)})
    out = tmp_path / "reports"
    status = main(
        ["diff", "--from", str(one), str(two), "--format", "all", "--out-dir", str(out), "--width", "90"]
    )
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["diff.html", "diff.json", "diff.md"]
    printed = capsys.readouterr().out
    assert "paramparity diff" in printed and printed.count("wrote ") == 3
    table = [line for line in printed.splitlines() if not line.startswith("wrote ")]  # paths do not wrap
    assert max(len(line) for line in table) <= 90
    assert json.loads((out / "diff.json").read_text())["backends"] == [FIRST, THIRD]


def test_from_with_backends_keeps_those_only(tmp_path, capsys):
    saved = _saved(tmp_path, "all.json", {name: make_record(name) for name in BACKENDS})
    out = tmp_path / "out"
    assert (
        main(["diff", "--from", str(saved), "--backends", THIRD, "--format", "json", "--out-dir", str(out)])
        == 0
    )
    assert json.loads((out / "diff.json").read_text())["backends"] == [THIRD]


def test_a_colour_terminal_fits_its_width_too():
    buffer = io.StringIO()
    console = Console(file=buffer, width=70, force_terminal=True, color_system="truecolor")
    diff.print_terminal(diff.merge(varied_records(BACKENDS)), 70, console)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", buffer.getvalue())
    assert "\x1b[" in buffer.getvalue() and max(len(line) for line in plain.splitlines()) <= 70


def test_a_probe_run_saves_the_records_once_whatever_the_format(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_probes(backends, *args, **kwargs):
        calls.append(backends)
        return {name: make_record(name) for name in backends}

    monkeypatch.setattr(diff, "run_probes", fake_probes)
    assert main(["diff", "--backends", FIRST, "--format", "markdown", "--out-dir", str(tmp_path)]) == 0
    assert len(calls) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["diff.json", "diff.md"]
    saved = diff.load_records([tmp_path / "diff.json"])
    assert list(saved) == [FIRST]


def test_from_renders_without_any_framework(tmp_path):
    """A child where importing any declared framework fails still renders every format."""
    saved, out = _saved(tmp_path, "diff.json", varied_records(BACKENDS)), tmp_path / "out"
    code = (
        "import sys\n"
        f"BLOCKED = {FRAMEWORKS!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'framework {name} imported')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from common.commands.cli import main\n"
        f"args = ['diff', '--from', {str(saved)!r}, '--format', 'all', '--out-dir', {str(out)!r}]\n"
        "sys.exit(main(args))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["diff.html", "diff.json", "diff.md"]
    table = [line for line in result.stdout.splitlines() if not line.startswith("wrote ")]
    assert max(len(line) for line in table) <= 100


def test_unknown_arguments_print_the_diff_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["diff", "--colour"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: paramparity diff" in err and "--colour" in err


@pytest.mark.parametrize("args", [["--format", "pdf"], ["--width", "5"], ["--width", "wide"]])
def test_bad_options_are_refused(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(["diff", *args])
    assert info.value.code == 2 and "usage: paramparity diff" in capsys.readouterr().err


def test_unknown_backend_is_a_usage_error():
    assert main(["diff", "--backends", f"{FIRST},caffe"]) == 2


# -- probes and their progress ---------------------------------------------------------------------
FAKE_PROBE = """
import json, sys
from tests.common.records import make_record
json.dump(make_record(sys.argv[1]), open(sys.argv[2], "w"))
"""


def _command(backend: str, out: Path) -> list[str]:
    """One probe works, one crashes without a record, one cannot even start."""
    if backend == FIRST:
        return [sys.executable, "-c", FAKE_PROBE, backend, str(out)]
    if backend == SECOND:
        return [sys.executable, "-c", f"raise SystemExit('{SECOND} exploded')"]
    raise UsageError(f"cannot create .venvs/{backend}")


def test_run_probes_reports_every_backend_even_when_some_fail(tmp_path):
    log = tmp_path / "progress.txt"
    with log.open("w") as stream:
        records = diff.run_probes([FIRST, SECOND, THIRD], _command, stream=stream)
    doc = diff.merge(records)
    assert doc["backends"] == [FIRST, SECOND, THIRD]
    assert list(doc["failed"]) == [SECOND, THIRD]
    assert f"{SECOND} exploded" in records[SECOND]["error"]
    assert f"cannot create .venvs/{THIRD}" in records[THIRD]["error"]
    progress = log.read_text()
    assert (
        f"[{FIRST}] done" in progress and f"[{SECOND}] FAILED" in progress and f"[{THIRD}] FAILED" in progress
    )


def test_progress_shows_one_line_per_backend_with_elapsed_time_and_final_state():
    now = [0.0]
    progress = diff.ProbeProgress([FIRST, SECOND, THIRD], clock=lambda: now[0])
    progress.write(f"[{FIRST}] probing ...\n[{SECOND}] prob")
    progress.write("ing ...\n")
    now[0] = 2.5
    progress.write(f"[{FIRST}] done (2.5s)\n[{SECOND}] FAILED: ImportError: no torch\n")
    now[0] = 4.0
    buffer = io.StringIO()
    Console(file=buffer, width=80, color_system=None).print(progress)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 3
    assert FIRST in lines[0] and "2.5s" in lines[0] and "done" in lines[0]
    assert SECOND in lines[1] and "2.5s" in lines[1] and "failed: ImportError: no torch" in lines[1]
    assert THIRD in lines[2] and "s" not in lines[2].replace(THIRD, "")


def test_on_a_terminal_the_probes_show_live_progress():
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=True, color_system=None)
    records = diff.run_probes([FIRST, SECOND, THIRD], _command, console=console)
    assert records[FIRST]["ok"] and not records[SECOND]["ok"]
    final = buffer.getvalue()
    assert all(name in final for name in (FIRST, SECOND, THIRD)) and "done" in final and "failed" in final


# -- state and freezing ------------------------------------------------------------------------------
def test_the_state_section_shows_every_backend_and_why_one_built_none():
    records = {name: make_record(name) for name in BACKENDS[:3]}
    records[BACKENDS[1]]["state"] = {"running_var": "biased", **records[BACKENDS[1]]["state"]}
    records[BACKENDS[1]]["state"]["running_var"] = "biased"
    records[BACKENDS[2]]["state"] = {"not_built": "batchnorm: not built in this adapter yet"}
    doc = diff.merge(records)
    rows = {row["label"]: row for row in doc["rows"] if row["section"] == diff.STATE}
    assert set(rows) == {row.label for row in diff.STATE_ROWS}
    variance = rows["running variance kept"]
    assert variance["differs"] and variance["cells"][BACKENDS[0]]["value"] == "unbiased"
    assert variance["cells"][BACKENDS[1]]["value"] == "biased"
    assert "not built" in variance["cells"][BACKENDS[2]]["value"]
    text = diff.render_terminal(doc, 200)
    assert diff.STATE in text and "native-only" in text


def test_the_readme_state_table_is_the_one_the_declarations_give():
    """`paramparity facts state` generates it; the README must hold it as printed now."""
    from common.commands.facts import TABLES

    readme = (ROOT / "README.md").read_text()
    for name, table in TABLES.items():
        start, end = f"<!-- facts:{name} -->\n", f"\n<!-- /facts:{name} -->"
        assert start in readme and end in readme, f"README lacks the {name} table's markers"
        held = readme.split(start, 1)[1].split(end, 1)[0]
        assert held == table(), f"README's {name} table is stale: run `paramparity facts {name}`"


def test_a_partial_run_keeps_every_other_backends_record_and_refreshes_every_format(
    tmp_path, monkeypatch, capsys
):
    """After a full run, ``--backends FIRST`` replaces FIRST's record only; the HTML and Markdown
    written by the full run are written again from the merged records, never left stale."""
    out = tmp_path / "reports"
    probed: list[tuple[str, ...]] = []

    def fake_probes(backends, timeout):
        probed.append(tuple(backends))
        records = {name: make_record(name) | {"timing": {"seconds": len(probed)}} for name in backends}
        for record in records.values():
            record["versions"] = {**record["versions"], "framework": f"9.9.{len(probed)}-run"}
        return records

    monkeypatch.setattr(diff, "run_probes", fake_probes)
    assert main(["diff", "--format", "all", "--out-dir", str(out)]) == 0
    assert main(["diff", "--backends", FIRST, "--format", "json", "--out-dir", str(out)]) == 0
    assert probed == [BACKENDS, (FIRST,)]
    saved = json.loads((out / "diff.json").read_text())
    assert saved["backends"] == list(BACKENDS)
    assert saved["records"][FIRST]["timing"]["seconds"] == 2  # the new one
    assert all(saved["records"][name]["timing"]["seconds"] == 1 for name in BACKENDS[1:])
    assert f"kept the earlier records of {', '.join(BACKENDS[1:])}" in capsys.readouterr().err
    # The formats written together stay together: HTML and Markdown show the second run's record.
    assert sorted(p.name for p in out.iterdir()) == ["diff.html", "diff.json", "diff.md"]
    for name in ("diff.html", "diff.md"):
        text = (out / name).read_text()
        assert "9.9.2-run" in text and "9.9.1-run" in text, name  # the new record beside the kept ones


def test_facts_prints_the_table(capsys):
    """The command the README names, starting no child (it was an AttributeError on --backends)."""
    from common.commands.facts import TABLES

    assert main(["facts", "state"]) == 0
    assert capsys.readouterr().out == TABLES["state"]() + "\n"
