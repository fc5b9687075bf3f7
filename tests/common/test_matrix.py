"""The version matrix without any framework: its declaration, its cells, the claim x backend x
version table, diff --from merging versions, and the generated CI workflow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common import envs
from common.commands import diff, matrix
from common.commands.claims import BOOK_CLAIMS, DOES_NOT_HOLD, HOLDS, NOT_EVALUATED
from common.commands.cli import main
from common.config import backend_names
from common.core.models import BOOK_SPECS
from common.declarations import ROOT, declarations
from common.errors import UsageError
from tests.common.records import failed_record, make_record

CELLS = matrix.all_cells(matrix.load_variants())
# The book's TensorFlow-tab layer-count claim, found by what it measures, not by its words.
LAYER_COUNT = next(c for c in BOOK_CLAIMS if c.measure == "layer list length == unique layer objects (tied)")
TAB_BACKEND = next(d.name for d in declarations() if d.book_tab == LAYER_COUNT.tab)


def cell_record(backend: str, tag: str, order: int, **changes) -> dict:
    record = make_record(backend, **changes)
    record["matrix"] = {"tag": tag, "order": order, "env": "e", "adapter": backend, "why": "w"}
    return record


# -- the declaration ----------------------------------------------------------------------------
def pinned_versions(package: str) -> set[str]:
    return {p for c in CELLS if c.variant for p in c.variant.packages if envs._requirement_name(p) == package}


def test_the_declared_versions_cover_what_the_issue_asks():
    """Three TensorFlow versions (two variants and the pinned), two of JAX, two of Keras 3."""
    assert len(pinned_versions("tensorflow-cpu")) >= 2
    assert len(pinned_versions("jax")) >= 1
    assert any(p.startswith("keras==3.") for p in pinned_versions("keras"))


def test_every_backend_has_its_pinned_cell_last_and_each_cell_once():
    ids = [c.id for c in CELLS]
    assert len(ids) == len(set(ids))
    for name in backend_names():
        mine = [c for c in CELLS if c.backend == name]
        assert mine[-1].tag == matrix.PINNED and [c.order for c in mine] == list(range(len(mine)))


def test_a_variant_env_is_the_extra_with_its_pins_in_place_of_the_same_names():
    extra = envs.extra_requirements(CELLS[0].env)
    first = extra[0]
    name = envs._requirement_name(first)
    replaced = envs.variant_requirements(
        CELLS[0].env, [f"{name.replace('-', '_').upper()}==0.1", "newpkg==1"]
    )
    assert first not in replaced and f"{name.replace('-', '_').upper()}==0.1" in replaced
    assert "newpkg==1" in replaced and len(replaced) == len(extra) + 1


BAD_DECLARATIONS = [
    ('variants = [{ env = "nowhere", tag = "a", packages = ["x==1"], why = "w" }]', "env 'nowhere'"),
    (f'variants = [{{ env = "{CELLS[0].env}", tag = "a", packages = ["x==1"] }}]', "lacks 'why'"),
    (f'variants = [{{ env = "{CELLS[0].env}", tag = "a b", packages = ["x==1"], why = "w" }}]', "tag 'a b'"),
    (f'variants = [{{ env = "{CELLS[0].env}", tag = "a", packages = [], why = "w" }}]', "'packages'"),
    (
        f'variants = [{{ env = "{CELLS[0].env}", tag = "a", packages = ["x"], why = "w", colour = 1 }}]',
        "'colour'",
    ),
    (
        f'variants = [{{ env = "{CELLS[0].env}", tag = "a", packages = ["x"], why = "w", '
        f'adapters = {{ {CELLS[0].backend} = "{CELLS[0].backend}" }} }}]',
        "adapters_why",
    ),
    (
        f'variants = [{{ env = "{CELLS[0].env}", tag = "a", packages = ["x"], why = "w", '
        'backends = ["caffe"] }]',
        "'backends'",
    ),
    ("variants = 3", "variants = [...]"),
]


@pytest.mark.parametrize("text, says", BAD_DECLARATIONS, ids=[s for _, s in BAD_DECLARATIONS])
def test_a_bad_declaration_is_one_line_naming_the_file_and_the_key(tmp_path, text, says):
    path = tmp_path / "matrix.toml"
    path.write_text(text + "\n")
    with pytest.raises(UsageError) as caught:
        matrix.load_variants(path)
    message = str(caught.value)
    assert "\n" not in message and "matrix.toml" in message and says in message, message


def test_cells_are_selected_by_backend_id_or_tag():
    picked = matrix.select_cells(CELLS, "all", matrix.PINNED)
    assert {c.backend for c in picked} == set(backend_names()) and {c.tag for c in picked} == {matrix.PINNED}
    assert matrix.select_cells(CELLS, CELLS[0].backend, CELLS[0].id) == (CELLS[0],)
    with pytest.raises(UsageError, match="no cell 'nope'"):
        matrix.select_cells(CELLS, "all", "nope")


# -- the table ------------------------------------------------------------------------------------
def layer_count_records() -> dict[str, dict]:
    """The tab's backend at three versions: the claim holds on the first (the list drops the
    duplicate), not on the second, and the third could not be installed."""
    layers = len(BOOK_SPECS["tied"].layers)  # the older lists each layer once; the newer lists one twice
    older = cell_record(
        TAB_BACKEND,
        "old",
        0,
        **{
            "models.tied.facts.unique_layer_objects": layers - 1,
            "models.tied.facts.layer_list_length": layers - 1,
        },
    )
    newer = cell_record(TAB_BACKEND, "new", 1, **{"models.tied.facts.unique_layer_objects": layers - 1})
    newer["versions"]["framework"] = "3.0"
    broken = {
        **failed_record(TAB_BACKEND, "install failed: no wheel"),
        "matrix": {"tag": "pinned", "order": 2},
    }
    return {f"{TAB_BACKEND}@old": older, f"{TAB_BACKEND}@new": newer, f"{TAB_BACKEND}@pinned": broken}


def test_the_table_names_the_first_version_on_which_a_claim_changed():
    doc = matrix.matrix_doc(layer_count_records(), seconds=61.0)
    row = next(r for r in doc["claims"] if r["quote"] == LAYER_COUNT.quote and r["backend"] == TAB_BACKEND)
    assert [v["status"] for v in row["versions"]] == [HOLDS, DOES_NOT_HOLD, NOT_EVALUATED]
    assert row["first_change"] == "new (3.0)"
    unchanged = next(
        r for r in doc["claims"] if r["quote"] != LAYER_COUNT.quote and r["backend"] == TAB_BACKEND
    )
    assert unchanged["first_change"] is None
    text = matrix.render_text(doc)
    assert "took 1m 01s" in text and "changed at new (3.0)" in text


def test_a_cell_not_evaluated_says_why_and_never_counts_as_a_pass():
    doc = matrix.matrix_doc(layer_count_records())
    assert doc["not_evaluated"] == {f"{TAB_BACKEND}@pinned": "install failed: no wheel"}
    for row in doc["claims"]:
        assert row["versions"][-1]["status"] == NOT_EVALUATED
    for render in matrix.RENDERERS.values():
        assert "install failed: no wheel" in re.sub(r"<[^>]+>", "", render(doc))  # html: no <wbr>


def test_first_change_skips_versions_not_evaluated():
    statuses = [HOLDS, NOT_EVALUATED, HOLDS, DOES_NOT_HOLD]
    versions = [{"status": s, "version": str(k)} for k, s in enumerate(statuses)]
    assert matrix.first_change(versions) == "3"
    assert matrix.first_change(versions[:3]) is None


def test_float_noise_within_the_oracle_tolerance_is_no_change_between_versions():
    records = layer_count_records()
    noisy = {"forward": 2.2e-8, "grad layers.0.weight": 1.1e-8}  # rounded text differs, numbers agree
    records[f"{TAB_BACKEND}@new"]["models"]["mlp"]["max_abs_diff"] = noisy
    doc = matrix.matrix_doc(records)
    mlp = next(r for r in doc["parity"] if (r["section"], r["label"]) == (diff.ORACLE, "mlp"))
    assert mlp["versions"][0]["lines"] != mlp["versions"][1]["lines"] and not mlp["changed"]
    real_change = {**noisy, "forward": 0.5}
    records[f"{TAB_BACKEND}@new"]["models"]["mlp"]["max_abs_diff"] = real_change
    mlp = next(r for r in matrix.matrix_doc(records)["parity"] if r["label"] == "mlp")
    assert mlp["changed"]


def test_parity_checks_and_changed_behaviours_are_shown_per_version():
    doc = matrix.matrix_doc(layer_count_records())
    parity = {(r["section"], r["label"]) for r in doc["parity"]}
    assert (diff.ORACLE, "mlp") in parity and any(label in matrix.PARITY_LABELS for _, label in parity)
    changed = [r for r in doc["changed"] if r["label"] == "layer list length"]
    layers = len(BOOK_SPECS["tied"].layers)
    assert [v["lines"] for v in changed[0]["versions"][:2]] == [
        [f"len(net.layers) = {n}"] for n in (layers - 1, layers)
    ]


@pytest.mark.parametrize(
    "reason, error",
    [
        ("import error", "ModuleNotFoundError: No module named 'keras'"),
        ("adapter error", "AttributeError: module has no attribute 'Layer'"),
        ("install failed", "install failed: uv failed"),
        ("timed out", "timed out after 5s"),
    ],
)
def test_not_evaluated_reasons(reason, error):
    assert matrix.not_evaluated_reason(error).startswith(reason)


# -- diff --from: several runs, several versions --------------------------------------------------
def test_diff_from_merges_one_backend_at_two_versions_into_two_columns(tmp_path):
    records = layer_count_records()
    (tmp_path / "runs").mkdir()
    for column in (f"{TAB_BACKEND}@old", f"{TAB_BACKEND}@new"):  # two CI jobs, two files
        (tmp_path / "runs" / f"{column}.json").write_text(json.dumps(records[column]))
    out = tmp_path / "out"
    assert main(["diff", "--from", str(tmp_path / "runs"), "--format", "json", "--out-dir", str(out)]) == 0
    doc = json.loads((out / "diff.json").read_text())
    assert doc["backends"] == [f"{TAB_BACKEND}@old", f"{TAB_BACKEND}@new"]
    assert doc["versions"] == {f"{TAB_BACKEND}@old": "old", f"{TAB_BACKEND}@new": "new"}
    verdicts = {c["backend"]: c["status"] for c in doc["claims"] if c["quote"] == LAYER_COUNT.quote}
    assert verdicts == {f"{TAB_BACKEND}@old": HOLDS, f"{TAB_BACKEND}@new": DOES_NOT_HOLD}
    version_row = next(r for r in doc["rows"] if r["label"] == "declared version (matrix cell)")
    assert set(version_row["cells"]) == set(doc["backends"])
    # The saved document reads back as the same two columns.
    assert set(diff.load_records([out / "diff.json"])) == set(doc["backends"])


def test_diff_from_keeps_later_files_winning_for_one_version(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(cell_record(TAB_BACKEND, "v", 0)))
    second.write_text(json.dumps({**cell_record(TAB_BACKEND, "v", 0), "ok": False, "error": "later"}))
    assert diff.load_records([first, second])[f"{TAB_BACKEND}@v"]["error"] == "later"


def test_diff_from_an_empty_folder_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "common", "diff", "--from", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "without .json" in result.stderr


def test_matrix_renders_saved_records(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for column, record in layer_count_records().items():
        (runs / f"{column}.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    assert (
        main(["matrix", "--from", str(runs), "--format", "all", "--out-dir", str(out)]) == 1
    )  # one not evaluated
    assert {p.name for p in out.iterdir()} == {f"matrix.{ext}" for ext in matrix.EXTENSIONS.values()}
    assert "first changed at" in (out / "matrix.md").read_text()


def test_matrix_refuses_bad_input_in_one_line():
    for args in (["--cells", "nope"], ["--backends", "caffe"], ["--jobs", "0"], ["--colour"]):
        result = subprocess.run(
            [sys.executable, "-m", "common", "matrix", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)


# -- the CI workflow ------------------------------------------------------------------------------
def parse_workflow(text: str) -> dict:
    """JSON-compatible YAML: comment lines, then one JSON object (no YAML parser in the base env)."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return json.loads(body)


def test_the_workflow_has_one_job_per_cell_and_a_merge_job():
    flow = parse_workflow(matrix.workflow_text(CELLS))
    cell_jobs = {k: v for k, v in flow["jobs"].items() if k != "merge"}
    assert len(cell_jobs) == len(CELLS)
    assert sorted(job["name"] for job in cell_jobs.values()) == sorted(f"probe {c.id}" for c in CELLS)
    assert sorted(flow["jobs"]["merge"]["needs"]) == sorted(cell_jobs)
    merge_steps = " ".join(step.get("run", "") for step in flow["jobs"]["merge"]["steps"])
    assert "diff --from records --format html" in merge_steps
    for cell in CELLS:
        run = " ".join(s.get("run", "") for s in flow["jobs"][matrix.job_id(cell)]["steps"])
        assert f"--cells {cell.id}" in run


def test_the_committed_workflow_is_the_generated_one():
    assert matrix.WORKFLOW.read_text() == matrix.workflow_text(CELLS), (
        "regenerate it: .venvs/base/bin/python -m common matrix --workflow"
    )


def test_the_workflow_is_written_by_the_command(tmp_path):
    path = tmp_path / "flow.yml"
    assert main(["matrix", "--workflow", str(path)]) == 0
    assert parse_workflow(path.read_text()) == matrix.workflow(CELLS)


def test_job_ids_are_valid_github_ids():
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", matrix.job_id(c)) for c in CELLS)
    assert len({matrix.job_id(c) for c in CELLS}) == len(CELLS)


def test_the_clean_target_keeps_variant_envs():
    makefile = (ROOT / "Makefile").read_text()
    clean = makefile.split("\nclean:", 1)[1].split("\ndistclean:", 1)[0]
    assert "$(VENVS)\n" not in clean and "rm -rf $(VENVS)" not in clean
    assert Path(envs.VENVS / envs.variant_env("x", "y")).name == "x@y"
