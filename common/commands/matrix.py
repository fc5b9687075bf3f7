"""`make matrix`: the book's claims per backend and per framework version.

The versions are data (backends/matrix.toml): each variant of an environment names its pins,
why it matters, and which adapter answers for each backend in it. A cell is one (backend,
version): the pinned env, or a variant built as ``.venvs/<env>@<tag>``. Every cell is
independent: its env is built (one at a time), the behaviour probe runs in it, and its record,
self-describing JSON, is saved to ``reports/matrix/records/<backend>@<tag>.json``. The table is
claim x backend x version, with the first version on which a verdict changed, the oracle-parity
checks per version, and every other behaviour that changed between versions.

A cell that cannot be installed, imported or probed is "not evaluated", with its reason; it
never counts as a pass. ``--workflow`` writes the same cells as a GitHub Actions workflow: one
job per cell, and one that merges their records with ``diff --from`` and publishes the HTML.

This process imports no framework: the probes are subprocesses (common.commands.probe).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import envs
from common.commands import diff
from common.commands.claims import DOES_NOT_HOLD, HOLDS, NOT_EVALUATED
from common.commands.fanout import record_text, run_parallel, writable_folder, write_output
from common.config import add_backends_option, add_timeout_option, backend_names, parse_backend_list
from common.core.untrusted import printable
from common.declarations import BACKENDS_DIR, ROOT, declaration, declarations
from common.errors import UsageError

MATRIX_FILE = BACKENDS_DIR / "matrix.toml"
OUT_DIR = ROOT / "reports" / "matrix"
RECORDS = "records"  # under the out dir: one record per cell
WORKFLOW = ROOT / ".github" / "workflows" / "matrix.yml"
PINNED = "pinned"  # the tag of the cell that runs in the env as pyproject.toml and locks/ pin it
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
CELL_TIMEOUT = 1200.0  # a cell's probe; building its env is not counted
Record = Mapping[str, Any]


# -- the declaration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    env: str
    tag: str
    packages: tuple[str, ...]
    why: str
    backends: tuple[str, ...]  # the env's backends that run in it
    adapters: Mapping[str, str] = field(default_factory=dict)  # backend -> the adapter answering for it
    adapters_why: str = ""


@dataclass(frozen=True)
class Cell:
    backend: str  # the column: the backend whose book tab is checked
    tag: str
    order: int  # versions oldest first; the pinned cell last
    adapter: str  # the backend whose adapter runs
    variant: Variant | None = None  # None: the pinned env

    @property
    def id(self) -> str:
        return f"{self.backend}@{self.tag}"

    @property
    def env(self) -> str:
        base = declaration(self.adapter).env
        return base if self.variant is None else envs.variant_env(base, self.tag)

    def describe(self) -> dict[str, Any]:
        """What the cell's record says about how it was made (diff's ``matrix`` field)."""
        info: dict[str, Any] = {
            "tag": self.tag,
            "order": self.order,
            "env": self.env,
            "adapter": self.adapter,
        }
        if self.variant is None:
            info["why"] = "the pinned versions (pyproject.toml's extra, installed from its lock)"
        else:
            info |= {"packages": list(self.variant.packages), "why": self.variant.why}
            if self.adapter != self.backend:
                info["adapter_why"] = self.variant.adapters_why
        return info


_KEYS = {"env", "tag", "packages", "why", "backends", "adapters", "adapters_why"}


def load_variants(path: Path = MATRIX_FILE) -> tuple[Variant, ...]:
    """The declared variants, checked: each error is one line naming the file, the variant and the key."""
    import tomllib

    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{where}: cannot read the version matrix: {error}") from None
    entries = data.get("variants")
    if not isinstance(entries, list) or set(data) != {"variants"}:
        raise UsageError(f"{where}: expected one key, `variants = [...]`, a list of variants")
    known_envs: dict[str, list[str]] = {}
    for entry in declarations():
        known_envs.setdefault(entry.env, []).append(entry.name)
    found: list[Variant] = []
    for number, entry in enumerate(entries, 1):
        at = f"{where}: variant {number}"
        if not isinstance(entry, dict):
            raise UsageError(f"{at}: not a table")
        if unknown := set(entry) - _KEYS:
            raise UsageError(f"{at}: unknown key {sorted(unknown)[0]!r}; keys: {', '.join(sorted(_KEYS))}")
        for key in ("env", "tag", "packages", "why"):
            if key not in entry:
                raise UsageError(f"{at}: lacks {key!r}")
        env, tag = entry["env"], entry["tag"]
        if env not in known_envs:
            raise UsageError(f"{at}: env {env!r} holds no backend; envs: {', '.join(known_envs)}")
        if not isinstance(tag, str) or not TAG.fullmatch(tag) or tag == PINNED:
            raise UsageError(
                f"{at}: tag {tag!r} should be letters, digits, '.', '_', '-' (and not {PINNED!r})"
            )
        at = f"{where}: variant {env}@{tag}"
        packages = entry["packages"]
        if (
            not isinstance(packages, list)
            or not packages
            or not all(isinstance(p, str) and p for p in packages)
        ):
            raise UsageError(f"{at}: 'packages' should be a non-empty list of requirements")
        if not isinstance(entry["why"], str) or not entry["why"].strip():
            raise UsageError(f"{at}: 'why' should say why this version matters")
        members = known_envs[env]
        chosen = entry.get("backends", members)
        if not isinstance(chosen, list) or not chosen or any(b not in members for b in chosen):
            raise UsageError(f"{at}: 'backends' should name some of the env's backends: {', '.join(members)}")
        adapters = entry.get("adapters", {})
        if not isinstance(adapters, dict) or any(
            b not in chosen or a not in members for b, a in adapters.items()
        ):
            raise UsageError(
                f"{at}: 'adapters' maps its backends to backends of the same env: {', '.join(members)}"
            )
        if adapters and not str(entry.get("adapters_why", "")).strip():
            raise UsageError(f"{at}: 'adapters' needs 'adapters_why', the reason for the choice")
        if any((v.env, v.tag) == (env, tag) for v in found):
            raise UsageError(f"{at}: declared twice")
        found.append(
            Variant(
                env,
                tag,
                tuple(packages),
                entry["why"].strip(),
                tuple(chosen),
                adapters,
                str(entry.get("adapters_why", "")).strip(),
            )
        )
    return tuple(found)


def all_cells(variants: Sequence[Variant]) -> tuple[Cell, ...]:
    """Every cell: each backend at each variant of its env (in declaration order), then pinned."""
    cells = []
    for entry in declarations():
        mine = [v for v in variants if v.env == entry.env and entry.name in v.backends]
        for order, variant in enumerate(mine):
            cells.append(
                Cell(entry.name, variant.tag, order, variant.adapters.get(entry.name, entry.name), variant)
            )
        cells.append(Cell(entry.name, PINNED, len(mine), entry.name))
    return tuple(cells)


def select_cells(cells: Sequence[Cell], backends: str = "all", chosen: str | None = None) -> tuple[Cell, ...]:
    """The cells of ``--backends``, narrowed by ``--cells`` (``backend@tag`` ids, or bare tags)."""
    names = set(parse_backend_list(backends))
    picked = [c for c in cells if c.backend in names]
    if chosen:
        wanted = [w.strip() for w in chosen.split(",") if w.strip()]
        known = {c.id for c in cells} | {c.tag for c in cells}
        for want in wanted:
            if want not in known:
                ids = ", ".join(c.id for c in cells)
                raise UsageError(f"--cells: no cell {want!r}; cells: {ids} (or a tag: {PINNED}, ...)")
        picked = [c for c in picked if c.id in wanted or c.tag in wanted]
    if not picked:
        raise UsageError("no cell is selected: --backends and --cells leave none")
    return tuple(picked)


# -- running -----------------------------------------------------------------------------------------
def build_envs(cells: Sequence[Cell]) -> dict[str, str]:
    """Each cell's env, one at a time (installers share the disk and the cores); the cause of
    each env that could not be made. Progress goes to stderr."""
    failures: dict[str, str] = {}
    with contextlib.redirect_stdout(sys.stderr):
        for cell in {c.env: c for c in cells}.values():
            try:
                if cell.variant is None:
                    envs.ensure_venv(cell.env)
                else:
                    envs.create_variant(declaration(cell.adapter).env, cell.tag, cell.variant.packages)
            except UsageError as error:
                failures[cell.env] = str(error)
                print(f"[{cell.env}] not installed: {error}", file=sys.stderr, flush=True)
    return failures


def not_evaluated_reason(error: str) -> str:
    """Why a cell has no verdicts, in the report's words."""
    if error.startswith("install failed"):
        return error
    if "timed out" in error:
        return error
    if re.search(r"\b(ImportError|ModuleNotFoundError)\b|cannot import|No module named", error):
        return f"import error: {error}"
    return f"adapter error: {error}"


def run_cells(cells: Sequence[Cell], timeout: float, jobs: int) -> dict[str, dict[str, Any]]:
    """Build the envs, probe every cell, and return each cell's record (failed ones too)."""
    failures = build_envs(cells)
    by_id = {c.id: c for c in cells}

    def command(cell_id: str, out: Path) -> list[str]:
        cell = by_id[cell_id]
        if cell.env in failures:
            raise UsageError(f"install failed: {failures[cell.env]}")
        python = envs.VENVS / cell.env / "bin" / "python"
        return [str(python), "-m", "common.commands.probe", "--backend", cell.adapter, "--out", str(out)]

    raw = run_parallel(list(by_id), command, sys.stderr, what="probing", timeout=timeout, at_once=jobs)
    records = {}
    for cell_id, record in raw.items():
        cell = by_id[cell_id]
        record = {**record, "backend": cell.backend, "matrix": cell.describe()}
        if cell.adapter != cell.backend:
            record["adapter"] = cell.adapter
        if not record.get("ok"):
            record["error"] = not_evaluated_reason(str(record.get("error", "no record")))
        records[cell_id] = record
    return records


# -- the table ---------------------------------------------------------------------------------------
PARITY_LABELS = ("tied grad == sum over uses", "write at layers.2 seen at layers.4")


def _version(record: Record) -> str:
    """How a cell's version reads: its tag, and the framework version it reported."""
    tag = record["matrix"]["tag"]
    framework = record.get("versions", {}).get("framework") if record.get("ok") else None
    return f"{tag} ({framework})" if framework else tag


def matrix_doc(records: Mapping[str, Record], seconds: float | None = None) -> dict[str, Any]:
    """claim x backend x version, from cell records keyed ``backend@tag``."""
    merged = diff.merge(records)
    columns = merged["backends"]
    backend_of = {c: diff.column_backend(c, records[c]) for c in columns}
    version_of = {c: _version(records[c]) for c in columns}

    claims: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for check in merged["claims"]:
        column = check["backend"]
        key = (check["tab"], check["section"], check["quote"], backend_of[column])
        row = claims.setdefault(
            key, {"tab": key[0], "section": key[1], "quote": key[2], "backend": key[3], "versions": []}
        )
        row["versions"].append(
            {
                "column": column,
                "version": version_of[column],
                "status": check["status"],
                "text": diff._verdict_text(check)
                if records[column].get("ok")
                else f"not evaluated ({one_reason(records[column]).split(':')[0]}: see the cells above)",
            }
        )
    for row in claims.values():
        row["first_change"] = first_change(row["versions"])

    parity, changed = [], []
    compared = compared_values(records, backend_of)
    for row in merged["rows"]:
        per_backend: dict[str, list[dict[str, Any]]] = {}
        for column in columns:
            cell = row["cells"].get(column)
            if cell is not None:
                per_backend.setdefault(backend_of[column], []).append(
                    {
                        "column": column,
                        "version": version_of[column],
                        "lines": diff.cell_lines(cell),
                        "value": compared.get((row["section"], row["label"], column)),
                        "error": cell.get("error"),
                    }
                )
        is_parity = row["section"] == diff.ORACLE or row["label"] in PARITY_LABELS
        for backend, cells in per_backend.items():
            entry = {"section": row["section"], "label": row["label"], "backend": backend, "versions": cells}
            values = [c["value"] for c in cells if c["error"] is None]
            entry["changed"] = any(not diff.close(values[0], v) for v in values[1:])
            if is_parity:
                parity.append(entry)
            elif entry["changed"] and row["kind"] == diff.BEHAVIOUR:
                changed.append(entry)
    not_evaluated = {c: one_reason(records[c]) for c in columns if not records[c].get("ok")}
    return {
        "title": "paramparity matrix: the book's claims per backend and version",
        "cells": [
            {"column": c, "backend": backend_of[c], "version": version_of[c], **records[c]["matrix"]}
            for c in columns
        ],
        "not_evaluated": not_evaluated,
        "claims": sorted(
            claims.values(), key=lambda r: (r["section"], r["quote"], backend_names().index(r["backend"]))
        ),
        "parity": parity,
        "changed": changed,
        "seconds": None if seconds is None else round(seconds, 1),
        "records": dict(records),  # so `diff --from matrix.json` renders the same cells
    }


def compared_values(records: Mapping[str, Record], backend_of: Mapping[str, str]) -> dict[tuple, Any]:
    """What diff compares per row and column (numbers, not their rounded text), so float noise
    within the oracle tolerance is no change between versions."""
    ok = {c: {**records[c], "backend": b} for c, b in backend_of.items() if records[c].get("ok")}
    rows = (*diff.ROWS, *diff.STATE_ROWS, *diff.EMBEDDING_ROWS, *diff.capability_rows(ok))
    values: dict[tuple, Any] = {}
    for row in rows:
        for column, record in ok.items():
            with contextlib.suppress(*diff._UNREADABLE):
                values[(row.section, row.label, column)] = diff._plain((row.compare or row.extract)(record))
    return values


def one_reason(record: Record) -> str:
    return printable(str(record.get("error", "no record")), limit=400)


def first_change(versions: Sequence[Mapping[str, Any]]) -> str | None:
    """The first version whose verdict differs from the evaluated version before it; None when
    no evaluated verdict changes. A cell not evaluated is skipped: it is no evidence either way."""
    previous = None
    for entry in versions:
        if entry["status"] not in (HOLDS, DOES_NOT_HOLD):
            continue
        if previous is not None and entry["status"] != previous:
            return entry["version"]
        previous = entry["status"]
    return None


def _took(doc: Mapping[str, Any]) -> str:
    seconds = doc.get("seconds")
    if seconds is None:
        return "rendered from saved records"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"took {minutes}m {rest:02d}s ({seconds:.0f} s): envs built, probes run, table rendered"


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    cells, missing = doc["cells"], doc["not_evaluated"]
    checks = [v for row in doc["claims"] for v in row["versions"]]
    counts = {s: sum(v["status"] == s for v in checks) for s in (HOLDS, DOES_NOT_HOLD, NOT_EVALUATED)}
    changed = [row for row in doc["claims"] if row["first_change"]]
    return [
        f"{doc['title']} ({_took(doc)})",
        f"Cells: {len(cells)} (backend x version), {len(cells) - len(missing)} evaluated, "
        f"{len(missing)} not evaluated.",
        f"Claim checks: {counts[HOLDS]} hold, {counts[DOES_NOT_HOLD]} do not hold, "
        f"{counts[NOT_EVALUATED]} not evaluated; the verdict changes between versions in {len(changed)} of "
        f"{len(doc['claims'])} (claim, backend) rows.",
    ]


def _cell_line(cell: Mapping[str, Any]) -> str:
    adapter = (
        f"; the {cell['adapter']} adapter runs it: {cell['adapter_why']}" if cell.get("adapter_why") else ""
    )
    pins = f" [{', '.join(cell['packages'])}]" if cell.get("packages") else ""
    return f"{cell['column']}: {cell['version']}{pins}: {cell.get('why', 'no reason recorded')}{adapter}"


def _versions_text(entries: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    return [f"{e['version']}: {e[key] if key != 'lines' else '; '.join(e['lines'])}" for e in entries]


def render_text(doc: Mapping[str, Any]) -> str:
    out = [*summary_lines(doc), "", "Cells (oldest first per backend):"]
    out += [f"  {printable(_cell_line(c), limit=None)}" for c in doc["cells"]]
    if doc["not_evaluated"]:
        out += ["", "Not evaluated (never counted as a pass):"]
        out += [f"  {c}: {reason}" for c, reason in doc["not_evaluated"].items()]
    out += ["", "The book's claims, per backend and version (oldest first):"]
    for row in doc["claims"]:
        change = f"changed at {row['first_change']}" if row["first_change"] else "no change"
        out.append(f"  [{row['tab']} {row['section']}] {row['quote']}")
        out.append(f"    {row['backend']} ({change})")
        out += [f"      {line}" for line in _versions_text(row["versions"], "text")]
    for title, rows in (
        ("Oracle parity, per version", doc["parity"]),
        ("Other behaviours that changed between versions", doc["changed"]),
    ):
        out += ["", f"{title}:"]
        for row in rows:
            mark = " (changed)" if row["changed"] else ""
            out.append(f"  {row['section']} / {row['label']} / {row['backend']}{mark}")
            out += [f"      {line}" for line in _versions_text(row["versions"], "lines")]
        if not rows:
            out.append("  (none)")
    return "\n".join(printable(line, limit=None) for line in out) + "\n"


def render_markdown(doc: Mapping[str, Any]) -> str:
    md = diff.md
    out = ["# paramparity matrix", ""] + [md(line) + "  " for line in summary_lines(doc)] + [""]
    out += ["## Cells", ""] + [f"- {md(_cell_line(c))}" for c in doc["cells"]] + [""]
    if doc["not_evaluated"]:
        out += (
            ["## Not evaluated", ""] + [f"- {md(c)}: {md(r)}" for c, r in doc["not_evaluated"].items()] + [""]
        )
    out += ["## The book's claims, per backend and version", ""]
    out += diff._md_table(
        ["section", "claim", "backend", "verdicts, oldest version first", "first changed at"],
        [
            [
                r["section"],
                r["quote"],
                r["backend"],
                "\n".join(_versions_text(r["versions"], "text")),
                r["first_change"] or "-",
            ]
            for r in doc["claims"]
        ],
    )
    for title, rows in (
        ("Oracle parity, per version", doc["parity"]),
        ("Other behaviours that changed between versions", doc["changed"]),
    ):
        out += ["", f"## {title}", ""]
        out += (
            diff._md_table(
                ["check", "backend", "per version, oldest first", "changed"],
                [
                    [
                        f"{r['section']} / {r['label']}",
                        r["backend"],
                        "\n".join(_versions_text(r["versions"], "lines")),
                        "yes" if r["changed"] else "no",
                    ]
                    for r in rows
                ],
            )
            if rows
            else ["(none)"]
        )
    return "\n".join(out) + "\n"


_STATUS_CLASS = {HOLDS: "holds", DOES_NOT_HOLD: "fails", NOT_EVALUATED: "notev"}


def render_html(doc: Mapping[str, Any]) -> str:
    e = diff._h
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>paramparity matrix</title><style>{diff.HTML_STYLE}</style></head><body>",
        "<h1>paramparity matrix</h1>",
        "<div class='verdict'>" + "".join(f"<p>{e(line)}</p>" for line in summary_lines(doc)) + "</div>",
        "<h2>Cells</h2><ul class='legend'>"
        + "".join(f"<li>{e(_cell_line(c))}</li>" for c in doc["cells"])
        + "</ul>",
    ]
    if doc["not_evaluated"]:
        parts.append(
            "<h2>Not evaluated</h2><ul class='failed'>"
            + "".join(f"<li>{e(f'{c}: {r}')}</li>" for c, r in doc["not_evaluated"].items())
            + "</ul>"
        )
    parts.append(
        "<h2>The book's claims, per backend and version</h2><table class='claims'><thead><tr>"
        "<th>section</th><th>claim</th><th>backend</th><th>verdicts, oldest version first</th>"
        "<th>first changed at</th></tr></thead><tbody>"
    )
    for row in doc["claims"]:
        verdicts = "".join(
            f"<div class='{_STATUS_CLASS.get(v['status'], '')}'>"
            f"<span class='v'>{e(v['version'])}: {e(v['text'])}</span></div>"
            for v in row["versions"]
        )
        mark = " class='fails'" if row["first_change"] else ""
        parts.append(
            f"<tr><td>{e(row['section'])}</td><td>{e(row['quote'])}</td><td>{e(row['backend'])}</td>"
            f"<td>{verdicts}</td><td{mark}>{e(row['first_change'] or '-')}</td></tr>"
        )
    parts.append("</tbody></table>")
    for title, rows in (
        ("Oracle parity, per version", doc["parity"]),
        ("Other behaviours that changed between versions", doc["changed"]),
    ):
        parts.append(
            f"<h2>{html.escape(title)}</h2><table><thead><tr><th>check</th><th>backend</th>"
            "<th>per version, oldest first</th><th>changed</th></tr></thead><tbody>"
        )
        for row in rows:
            values = "".join(
                f"<span class='v'>{e(line)}</span>" for line in _versions_text(row["versions"], "lines")
            )
            parts.append(
                f"<tr><td>{e(row['section'] + ' / ' + row['label'])}</td><td>{e(row['backend'])}</td>"
                f"<td>{values}</td><td>{'yes' if row['changed'] else 'no'}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


RENDERERS = {
    "text": render_text,
    "markdown": render_markdown,
    "html": render_html,
    "json": lambda doc: json.dumps(doc, indent=1, sort_keys=True) + "\n",
}
EXTENSIONS = {"text": "txt", "markdown": "md", "html": "html", "json": "json"}


# -- the CI workflow ---------------------------------------------------------------------------------
WORKFLOW_HEADER = (
    "# Generated by `paramparity matrix --workflow` from backends/matrix.toml and the backend\n"
    "# declarations; do not edit (tests/common/test_matrix.py checks it is current). JSON is YAML.\n"
)
PYTHON_SETUP = [
    {"uses": "actions/checkout@v4"},
    {"uses": "actions/setup-python@v5", "with": {"python-version": "3.11"}},
]


def job_id(cell: Cell) -> str:
    """A GitHub job id (letters, digits, '-', '_') for a cell."""
    return "cell-" + re.sub(r"[^A-Za-z0-9_-]", "_", cell.id.replace("@", "-"))


def workflow(cells: Sequence[Cell]) -> dict[str, Any]:
    """One job per cell (build its env, probe, upload the record), and one that merges them."""
    jobs: dict[str, Any] = {}
    for cell in cells:
        jobs[job_id(cell)] = {
            "name": f"probe {cell.id}",
            "runs-on": "ubuntu-22.04",
            "timeout-minutes": 90,
            "steps": [
                *PYTHON_SETUP,
                {
                    "name": f"build .venvs/{cell.env} and probe {cell.id}",
                    "run": f"make matrix ARGS='--cells {cell.id} --format json'",
                },
                {
                    "uses": "actions/upload-artifact@v4",
                    "if": "always()",
                    "with": {
                        "name": f"record-{job_id(cell)}",
                        "path": f"reports/matrix/{RECORDS}/{cell.id}.json",
                        "if-no-files-found": "error",
                    },
                },
            ],
        }
    jobs["merge"] = {
        "name": "merge the records and publish the HTML",
        "needs": [job_id(c) for c in cells],
        "if": "always()",
        "runs-on": "ubuntu-22.04",
        "steps": [
            *PYTHON_SETUP,
            {
                "uses": "actions/download-artifact@v4",
                "with": {"pattern": "record-*", "merge-multiple": True, "path": "records"},
            },
            {
                "name": "merge with diff --from, render the matrix",
                "run": "make venv-base && .venvs/base/bin/python -m common diff --from records --format html "
                "--out-dir site; .venvs/base/bin/python -m common matrix --from records --format all "
                "--out-dir site",
            },
            {"uses": "actions/upload-artifact@v4", "with": {"name": "matrix-report", "path": "site"}},
        ],
    }
    return {
        "name": "paramparity version matrix",
        "on": {"workflow_dispatch": {}, "schedule": [{"cron": "0 5 * * 1"}]},
        "permissions": {"contents": "read"},
        "jobs": jobs,
    }


def workflow_text(cells: Sequence[Cell]) -> str:
    return WORKFLOW_HEADER + json.dumps(workflow(cells), indent=2) + "\n"


# -- the command -------------------------------------------------------------------------------------
def add_parser(commands) -> None:
    parser = commands.add_parser(
        "matrix",
        help="the book's claims per backend and framework version (backends/matrix.toml)",
        description="Build each declared version's env (.venvs/<env>@<tag>, one at a time), run the "
        "behaviour probe in it, save one record per (backend, version) to reports/matrix/records/, and "
        "render claim x backend x version with the first version on which each verdict changed and the "
        "oracle-parity checks per version. A cell that cannot be installed or run is 'not evaluated', "
        "with its reason. Progress goes to stderr. Exit 1 if a cell was not evaluated.",
    )
    add_backends_option(parser)
    add_timeout_option(parser, default=CELL_TIMEOUT)
    parser.add_argument(
        "--cells", help="comma-separated cells (backend@tag, or a tag such as pinned, tf2.15)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="probes at once (default 1: one core each)")
    parser.add_argument(
        "--format",
        default="text",
        choices=(*RENDERERS, "all"),
        help="text prints (and writes matrix.txt); the others write reports/matrix/matrix.<ext>",
    )
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where records and tables go")
    parser.add_argument(
        "--from",
        dest="from_files",
        nargs="+",
        metavar="PATH",
        help="render saved cell records (files or folders) instead of running",
    )
    parser.add_argument("--list", action="store_true", help="list the declared cells and exit")
    parser.add_argument(
        "--workflow",
        nargs="?",
        const=WORKFLOW,
        type=Path,
        metavar="FILE",
        help=f"write the GitHub Actions workflow (default {WORKFLOW.relative_to(ROOT)}) and exit",
    )
    parser.set_defaults(run=run_matrix)
    diff._refuse_unknown_arguments(parser)


def run_matrix(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.jobs < 1:
        raise UsageError(f"--jobs={args.jobs}, but should be at least 1")
    cells = all_cells(load_variants())
    if args.workflow:
        write_output(args.workflow, workflow_text(cells), "--workflow")
        print(f"wrote {diff._shown(args.workflow.absolute())}: {len(cells)} cell jobs and a merge job")
        return 0
    if args.list:
        for cell in select_cells(cells, args.backends, args.cells):
            print(
                printable(_cell_line({"column": cell.id, "version": cell.tag, **cell.describe()}), limit=None)
            )
        return 0
    writable_folder(args.out_dir, "--out-dir")
    if args.from_files:
        records = {c: r for c, r in diff.load_records(args.from_files).items() if diff.version_tag(r)}
        if not records:
            raise UsageError(
                f"--from {' '.join(args.from_files)}: no matrix cell record (one with a 'matrix' tag)"
            )
        seconds = None
    else:
        selected = select_cells(cells, args.backends, args.cells)
        print(
            f"matrix: {len(selected)} cells: {', '.join(c.id for c in selected)}", file=sys.stderr, flush=True
        )
        fresh = run_cells(selected, args.timeout, args.jobs)
        for cell_id, record in fresh.items():
            write_output(args.out_dir / RECORDS / f"{cell_id}.json", record_text(record))
        # The table covers every declared cell with a saved record: a run of some cells updates them.
        declared = {c.id for c in cells}
        saved = sorted(p for p in (args.out_dir / RECORDS).glob("*.json") if p.stem in declared)
        records = {**diff.load_records(saved), **fresh} if saved else fresh
        seconds = time.monotonic() - started
    doc = matrix_doc(records, seconds)
    formats = tuple(RENDERERS) if args.format == "all" else (args.format,)
    for fmt in dict.fromkeys(("json", *formats)):  # the json doc always: diff --from reads it
        path = write_output(args.out_dir / f"matrix.{EXTENSIONS[fmt]}", RENDERERS[fmt](doc))
        print(f"wrote {diff._shown(path.absolute())}", file=sys.stderr)
    if "text" in formats:
        sys.stdout.write(render_text(doc))
    else:
        print("\n".join(summary_lines(doc)))
    return 1 if doc["not_evaluated"] else 0
