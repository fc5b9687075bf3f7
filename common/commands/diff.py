"""`make diff`: run one behaviour probe per backend, in its own environment, in parallel; merge
the records into one table (a row per behaviour, a column per backend) and check the book.

This process imports no framework: the probes are subprocesses (common.commands.probe).
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.commands.claims import BOOK_CLAIMS, applies_to, evaluate
from common.commands.fanout import Command, module_command, prepare_envs, run_parallel
from common.commands.textable import format_table
from common.config import add_backends_option, backend_names, parse_backend_list
from common.declarations import declaration
from common.envs import ROOT

FORMATS = ("terminal", "json", "markdown", "html")
REPORTS = ROOT / "reports"
Record = Mapping[str, Any]


# -- rows: what the diff shows, one extractor per behaviour --------------------------------------
@dataclass(frozen=True)
class Row:
    section: str
    label: str
    extract: Callable[[Record], Any]


def _model(name: str) -> Callable[[Record], Record]:
    return lambda record: record["models"][name]


def _names(model: str) -> Callable[[Record], Any]:
    return lambda r: [p["native_name"] for p in r["models"][model]["params"]]


def _native_shapes(r: Record) -> list[str]:
    return [f"{p['native_name']} {tuple(p['native_shape'])}" for p in r["models"]["mlp"]["params"]]


def _unbuilt(r: Record) -> Any:
    unbuilt = r["models"]["mlp"]["unbuilt"]
    return [f"{name} {shape}" for name, shape in unbuilt.items()] or "no parameters yet"


def _init_stats(r: Record) -> list[str]:
    stats = r["models"]["mlp"]["init_stats"]
    return [f"{name}: mean {s['mean']:+.3f} std {s['std']:.3f}" for name, s in stats.items()]


def _nest_names(r: Record) -> list[str]:
    return [f"{p['name']} <- {p['native_name']}" for p in r["models"]["nest"]["params"]]


def _serializations(r: Record) -> list[str]:
    facts = r["models"]["tied"]["facts"]["serializations"]
    return [f"{call}: {len(entries)} entries" for call, entries in facts.items()]


def _native_file(model: str) -> Callable[[Record], Any]:
    def extract(r: Record) -> Any:
        native = r["models"][model]["native_file"]
        return [native["call"], f"{len(native['entries'])} entries: {', '.join(native['entries'])}"]

    return extract


def _tied_in_native_file(r: Record) -> str:
    entries, unique = len(r["models"]["tied"]["native_file"]["entries"]), len(r["models"]["tied"]["params"])
    how = (
        "once"
        if entries == unique
        else ("twice" if entries == unique + 2 else f"{entries - unique} extra entries")
    )
    return f"{how} ({entries} entries for {unique} unique parameters)"


def _max_diffs(model: str) -> Callable[[Record], Any]:
    def extract(r: Record) -> list[str]:
        diffs = r["models"][model]["max_abs_diff"]
        grads = {k: v for k, v in diffs.items() if k.startswith("grad ")}
        worst = max(grads, key=grads.get)
        return [f"forward: {diffs['forward']:.2g}", f"worst {worst}: {grads[worst]:.2g}"]

    return extract


ROWS: tuple[Row, ...] = (
    Row("Versions", "framework", lambda r: r["versions"]["framework"]),
    Row("Versions", "python", lambda r: r["versions"]["python"]),
    Row("Versions", "numpy", lambda r: r["versions"]["numpy"]),
    Row("The 4->8->1 MLP", "native parameter names", _names("mlp")),
    Row(
        "The 4->8->1 MLP",
        "native parameter class",
        lambda r: sorted({p["native_class"] for p in r["models"]["mlp"]["params"]}),
    ),
    Row("The 4->8->1 MLP", "weight layout", lambda r: r["mechanisms"]["weight_layout"]),
    Row("The 4->8->1 MLP", "native shapes after first forward", _native_shapes),
    Row("The 4->8->1 MLP", "shapes before the first forward", _unbuilt),
    Row("The 4->8->1 MLP", "when shapes become known", lambda r: r["mechanisms"]["lazy"]),
    Row("The 4->8->1 MLP", "default initializer (weights)", _init_stats),
    Row(
        "The 4->8->1 MLP",
        "gradient before backward",
        lambda r: r["models"]["mlp"]["grad_state_before_backward"],
    ),
    Row("All parameters at once", "listing call", lambda r: r["models"]["mlp"]["facts"]["listing_call"]),
    Row(
        "All parameters at once",
        "entries returned (mlp / tied / nest)",
        lambda r: " / ".join(
            str(len(r["models"][m]["facts"]["listing_names"])) for m in ("mlp", "tied", "nest")
        ),
    ),
    Row("NestMLP", "canonical <- native names", _nest_names),
    Row("The tied model", "tie mechanism", lambda r: r["mechanisms"]["tie"]),
    Row(
        "The tied model",
        "layer list length",
        lambda r: (
            f"len({r['models']['tied']['facts']['layer_list_call']}) = "
            f"{r['models']['tied']['facts']['layer_list_length']}"
        ),
    ),
    Row(
        "The tied model",
        "distinct layer objects in it",
        lambda r: r["models"]["tied"]["facts"]["unique_layer_objects"],
    ),
    Row(
        "The tied model",
        "unique parameters (untied model)",
        lambda r: "{unique_params} ({untied_unique_params})".format(**r["models"]["tied"]["ties"]),
    ),
    Row("The tied model", "native listings and serializations", _serializations),
    Row(
        "The tied model",
        "same layer / parameter object",
        lambda r: [f"{k}: {v}" for k, v in r["models"]["tied"]["facts"]["tie_identity"].items()],
    ),
    Row(
        "The tied model",
        "write at layers.2 seen at layers.4",
        lambda r: r["models"]["tied"]["ties"]["write_seen_at_other_position"],
    ),
    Row(
        "The tied model",
        "tied grad == sum over uses",
        lambda r: r["models"]["tied"]["ties"]["tied_grad_is_sum_of_uses"],
    ),
    Row("The tied model", "native file format", _native_file("tied")),
    Row("The tied model", "native file stores the tied parameter", _tied_in_native_file),
    Row("Numbers vs the numpy oracle (max |delta|)", "mlp", _max_diffs("mlp")),
    Row("Numbers vs the numpy oracle (max |delta|)", "tied", _max_diffs("tied")),
    Row("Numbers vs the numpy oracle (max |delta|)", "nest", _max_diffs("nest")),
)


# -- merging ---------------------------------------------------------------------------------------
def merge(records: Mapping[str, Record]) -> dict[str, Any]:
    """One document from per-backend records; a failed record gets an error cell in every row."""
    backends = [name for name in backend_names() if name in records]
    rows = []
    for row in ROWS:
        cells = {}
        for name in backends:
            record = records[name]
            if not record.get("ok"):
                cells[name] = {"error": record.get("error", "no record")}
                continue
            try:
                cells[name] = {"value": _plain(row.extract(record))}
            except (KeyError, TypeError, IndexError) as error:
                cells[name] = {"error": f"record lacks {error}"}
        values = [json.dumps(c, sort_keys=True) for c in cells.values() if "value" in c]
        rows.append(
            {
                "section": row.section,
                "label": row.label,
                "cells": cells,
                "agree": len(set(values)) <= 1 and len(values) == len(cells),
            }
        )
    claims = []
    for claim in BOOK_CLAIMS:
        for name in backends:
            if applies_to(claim, declaration(name).book_tab):
                claims.append(_verdict(claim, name, records[name]))
    failed = sorted(name for name in backends if not records[name].get("ok"))
    return {
        "backends": backends,
        "failed": failed,
        "rows": rows,
        "claims": claims,
        "records": {name: records[name] for name in backends},
    }


def _verdict(claim, backend: str, record: Record) -> dict[str, Any]:
    verdict = evaluate(claim, record)
    return {
        "backend": backend,
        "tab": claim.tab or "all",
        "section": claim.section,
        "quote": claim.quote,
        "measure": claim.measure,
        "expected": _plain(claim.expected),
        "observed": _plain(verdict.observed),
        "detail": verdict.detail,
        "status": verdict.status,
    }


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


# -- rendering -------------------------------------------------------------------------------------
def _cell_text(cell: Mapping[str, Any], sep: str = "\n") -> str:
    if "error" in cell:
        return f"ERROR: {cell['error']}"
    value = cell["value"]
    if isinstance(value, list):
        return sep.join(str(v) for v in value) if value else "(none)"
    return str(value)


def render_terminal(doc: Mapping[str, Any]) -> str:
    backends = doc["backends"]
    out, section = [], None
    table_rows, marks = [], []
    for row in doc["rows"]:
        if row["section"] != section:
            section = row["section"]
            table_rows.append([f"[{section}]"] + [""] * len(backends))
            marks.append("")
        table_rows.append([row["label"]] + [_cell_text(row["cells"][b]) for b in backends])
        marks.append("" if row["agree"] else "*")
    out.append("paramparity diff: how the frameworks manage parameters (* = backends disagree)\n")
    out.append(format_table(["behaviour", *backends], table_rows, marks, max_width=36))
    out.append("\nThe book, checked (D2L 6.2; each claim evaluated on the installed version)\n")
    claim_rows = [
        [
            c["backend"],
            c["section"],
            c["quote"],
            _observed(c),
            c["status"].upper() if c["status"] != "holds" else "holds",
        ]
        for c in doc["claims"]
    ]
    claim_marks = ["" if c["status"] == "holds" else "!" for c in doc["claims"]]
    out.append(format_table(["backend", "sec", "claim", "observed", "verdict"], claim_rows, claim_marks))
    out.append(_footer(doc))
    return "\n".join(out) + "\n"


def _observed(claim: Mapping[str, Any]) -> str:
    return claim.get("detail") or _short(claim["observed"])


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _footer(doc: Mapping[str, Any]) -> str:
    broken = [c for c in doc["claims"] if c["status"] == "does not hold"]
    lines = [f"\n{len(broken)} of {len(doc['claims'])} book claims do not hold on the installed versions."]
    for name in doc["failed"]:
        lines.append(f"backend {name} FAILED: {doc['records'][name].get('error')}")
    return "\n".join(lines)


def render_markdown(doc: Mapping[str, Any]) -> str:
    backends = doc["backends"]

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    out = ["# paramparity diff", "", "Rows marked **≠** differ between backends.", ""]
    section = None
    for row in doc["rows"]:
        if row["section"] != section:
            section = row["section"]
            out += [
                "",
                f"## {section}",
                "",
                "| behaviour | " + " | ".join(backends) + " |",
                "|---" * (len(backends) + 1) + "|",
            ]
        label = row["label"] if row["agree"] else f"**≠** {row['label']}"
        out.append(
            f"| {esc(label)} | " + " | ".join(esc(_cell_text(row["cells"][b])) for b in backends) + " |"
        )
    out += [
        "",
        "## The book, checked",
        "",
        "| backend | section | claim | observed | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in doc["claims"]:
        verdict = c["status"] if c["status"] == "holds" else f"**{c['status']}**"
        out.append(
            f"| {c['backend']} | {c['section']} | {esc(c['quote'])} | {esc(_observed(c))} | {verdict} |"
        )
    out.append(_footer(doc).replace("\n", "\n\n"))
    return "\n".join(out) + "\n"


HTML_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left;font-size:13px}th{background:#f0f0f0}tr.differ td:first-child
{border-left:4px solid #d97706}tr.section td{background:#e8eef8;font-weight:bold}.error{color:#b91c1c}
.bad{background:#fee2e2}.good{background:#dcfce7}code{font-size:12px}"""


def render_html(doc: Mapping[str, Any]) -> str:
    backends = doc["backends"]

    def cell(c: Mapping[str, Any]) -> str:
        text = html.escape(_cell_text(c)).replace("\n", "<br>")
        return f'<td class="error">{text}</td>' if "error" in c else f"<td><code>{text}</code></td>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>paramparity diff</title>",
        f"<style>{HTML_STYLE}</style></head><body><h1>paramparity diff</h1>",
        "<p>One column per backend; rows with an orange bar differ between backends.</p><table>",
        "<tr><th>behaviour</th>" + "".join(f"<th>{html.escape(b)}</th>" for b in backends) + "</tr>",
    ]
    section = None
    for row in doc["rows"]:
        if row["section"] != section:
            section = row["section"]
            parts.append(
                f"<tr class='section'><td colspan='{len(backends) + 1}'>{html.escape(section)}</td></tr>"
            )
        css = "" if row["agree"] else " class='differ'"
        parts.append(
            f"<tr{css}><td>{html.escape(row['label'])}</td>"
            + "".join(cell(row["cells"][b]) for b in backends)
            + "</tr>"
        )
    parts.append(
        "</table><h2>The book, checked</h2><table><tr><th>backend</th><th>section</th>"
        "<th>claim</th><th>observed</th><th>verdict</th></tr>"
    )
    for c in doc["claims"]:
        css = "good" if c["status"] == "holds" else "bad"
        parts.append(
            f"<tr><td>{c['backend']}</td><td>{c['section']}</td><td>{html.escape(c['quote'])}</td>"
            f"<td><code>{html.escape(_observed(c))}</code></td>"
            f"<td class='{css}'>{c['status']}</td></tr>"
        )
    parts.append(f"</table><pre>{html.escape(_footer(doc).strip())}</pre></body></html>")
    return "\n".join(parts) + "\n"


def render_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


RENDERERS = {
    "terminal": render_terminal,
    "json": render_json,
    "markdown": render_markdown,
    "html": render_html,
}
EXTENSIONS = {"json": "json", "markdown": "md", "html": "html"}


# -- running the probes ----------------------------------------------------------------------------
PROBE = module_command("common.commands.probe")


def run_probes(backends: Sequence[str], command: Command = PROBE, stream=sys.stderr) -> dict[str, Record]:
    if command is PROBE:
        prepare_envs(backends)
    return run_parallel(backends, command, stream, what="probing")


def write_report(doc: Mapping[str, Any], fmt: str, out_dir: Path = REPORTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"diff.{EXTENSIONS[fmt]}"
    path.write_text(RENDERERS[fmt](doc))
    return path


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "diff",
        help="side-by-side report of how the frameworks behave",
        description="Run one behaviour probe per backend (each in its own .venvs/<backend>, in parallel), "
        "merge the records into one table and check the book's claims. Exit 1 if any backend failed.",
    )
    add_backends_option(parser)
    parser.add_argument(
        "--format",
        default="terminal",
        choices=FORMATS,
        help="terminal prints; json/markdown/html write reports/diff.<ext> (and print the path)",
    )
    parser.set_defaults(run=run_diff)


def run_diff(args: argparse.Namespace) -> int:
    backends = parse_backend_list(args.backends)
    records = run_probes(backends)
    doc = merge(records)
    if args.format == "terminal":
        sys.stdout.write(render_terminal(doc))
    else:
        path = write_report(doc, args.format)
        sys.stdout.write(_footer(doc).lstrip() + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    return 1 if doc["failed"] else 0
