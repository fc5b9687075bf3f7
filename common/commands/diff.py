"""`make diff`: run one behaviour probe per backend, in its own environment, in parallel; merge
the records into one table (a row per behaviour, a column per backend) and check the book.

One probe run serves every format: the records are saved once, to reports/diff.json, and
``--from`` renders any format from saved records (several files merge, later files winning per
backend), so a CI matrix's records can be shown together without installing any framework.

This process imports no framework: the probes are subprocesses (common.commands.probe).
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from common.atomic import write_atomically
from common.commands.claims import (
    BOOK_CLAIMS,
    DOES_NOT_HOLD,
    HOLDS,
    NOT_APPLICABLE,
    NOT_EVALUATED,
    applies_to,
    evaluate,
)
from common.commands.fanout import (
    Command,
    module_command,
    prepare_envs,
    run_parallel,
    unwritable,
    writable_folder,
)
from common.commands.textable import INDENT, SHAPE, fit_columns, pieces, wrap
from common.config import (
    DEFAULT_TIMEOUT,
    add_backends_option,
    add_timeout_option,
    backend_names,
    canonical_backend,
    parse_backend_list,
)
from common.core.expectations import ATOL, RTOL
from common.core.untrusted import printable, read_json_file, shown
from common.declarations import DeclarationError, declaration
from common.envs import ROOT
from common.errors import UsageError, one_line

FORMATS = ("terminal", "json", "markdown", "html")
EXTENSIONS = {"json": "json", "markdown": "md", "html": "html"}
REPORTS = ROOT / "reports"
RECORDS_FILE = "diff.json"  # the json format is the saved records, with the merged table
DEFAULT_WIDTH = 120  # when neither --width, COLUMNS nor a terminal says
MAX_RECORDS_BYTES = 64 << 20
Record = Mapping[str, Any]

# -- markers: every one is explained in every format -------------------------------------------------
DIFFERS, LACKS, CLAIM_FAILS = "*", "?", "!"
TOLERANCE = f"rtol {RTOL:g}, atol {ATOL:g}"
LEGEND = {
    DIFFERS: f"the backends differ in this behaviour (numbers within the oracle tolerance, {TOLERANCE}, "
    "count as equal)",
    LACKS: "a backend's record lacks this value (its cell says why)",
}
CLAIMS_LEGEND = {
    CLAIM_FAILS: "the claim does not hold on at least one backend it applies to",
    NOT_APPLICABLE: "the claim is about another framework's tab of the book",
}
CONTEXT_NOTE = "Versions are context: shown, never compared."
FAILED_NOTE = "A backend without a record keeps an empty column; the cause is listed above the table."


# -- rows: what the diff shows, one extractor per behaviour --------------------------------------
BEHAVIOUR, CONTEXT = "behaviour", "context"


@dataclass(frozen=True)
class Row:
    section: str
    label: str
    extract: Callable[[Record], Any]  # what the cell shows
    compare: Callable[[Record], Any] | None = None  # the behaviour compared; None: what is shown
    kind: str = BEHAVIOUR  # CONTEXT rows are shown and never compared


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


def _model_facts(r: Record, model: str) -> Record:
    return r["models"][model]["facts"]


def _tied_facts(r: Record) -> Record:
    return _model_facts(r, "tied")


STATE = "State and freezing"  # a BatchNorm, observed on one batch (common.commands.probe)


def _state(key: str, show: Callable[[Any], Any] = lambda value: value) -> Callable[[Record], Any]:
    """A state row: the observed value, or why the backend built no BatchNorm."""

    def extract(r: Record) -> Any:
        state = r["state"]
        return "not built (see its declared capabilities)" if "not_built" in state else show(state[key])

    return extract


def _serialized_state(calls: Mapping[str, Mapping[str, int]]) -> list[str]:
    return [
        f"{call}: {c['entries']} entries, {c['state']} state"
        + (f" + {c['native_only_state']} native-only" if c["native_only_state"] else "")
        for call, c in sorted(calls.items())
    ]


STATE_ROWS: tuple[Row, ...] = (
    Row(STATE, "default momentum (weight of the new batch)", _state("default_momentum")),
    Row(STATE, "default epsilon", _state("default_eps")),
    Row(STATE, "running variance kept", _state("running_var")),
    Row(
        STATE,
        "a frozen BatchNorm while training",
        _state(
            "frozen_batchnorm",
            lambda mode: {
                "training": "normalizes by the batch, updates its statistics",
                "inference": "runs in inference mode: running statistics, none updated",
            }.get(mode, mode),
        ),
    ),
    Row(STATE, "state, apart from parameters", _state("state")),
    Row(
        STATE,
        "the framework's state listing",
        _state("state_listing", lambda s: f"{s['call']}: {len(s['names'])} entries"),
    ),
    Row(STATE, "native-only state", _state("native_only_state", lambda names: names or "none")),
    Row(
        STATE,
        "parameter listing holds state",
        _state("parameter_listing_holds_state", lambda names: names or "no"),
    ),
    Row(STATE, "serializations hold", _state("serializations", _serialized_state)),
)

EMBED = "Embedding tied to the output projection"  # embed_tied (common.commands.probe)


def _embedding(key: str, show: Callable[[Any], Any] = lambda value: value) -> Callable[[Record], Any]:
    """An embedding row: the observed value, or why the backend built no embedding."""

    def extract(r: Record) -> Any:
        embedding = r.get("embedding", {"not_built": "not probed (a record from before embeddings)"})
        return (
            "not built (see its declared capabilities)" if "not_built" in embedding else show(embedding[key])
        )

    return extract


EMBEDDING_ROWS: tuple[Row, ...] = (
    Row(
        EMBED,
        "mechanism",
        _embedding(
            "mechanism",
            lambda m: {
                "same_parameter": "the output Dense holds the embedding's Parameter",
                "table_read": "the output layer reads the embedding's table",
            }.get(m, m),
        ),
    ),
    Row(EMBED, "output layer class", _embedding("projection_class")),
    Row(
        EMBED,
        "table applied",
        _embedding(
            "transposed", lambda t: "transposed (kernels are (in, out))" if t else "as the (out, in) weight"
        ),
    ),
    Row(EMBED, "one object at both uses", _embedding("one_object")),
    Row(EMBED, "unique parameters (of 4)", _embedding("unique_params")),
    Row(
        EMBED,
        "the framework's listing",
        _embedding("listing", lambda c: f"{c['call']}: {c['entries']} entries"),
    ),
    Row(
        EMBED,
        "its own file",
        _embedding(
            "native_file",
            lambda f: f"{f['call']}: {f['entries']} entries, the table {f['table_copies']}x",
        ),
    ),
    Row(EMBED, "tie kept when its file is loaded", _embedding("tie_kept_on_native_load")),
    Row(
        EMBED,
        "max |delta| vs the oracle (forward, gradients)",
        _embedding("max_abs_diff", lambda d: f"{max(d.values()):.1e}"),
    ),
)

ORACLE = "Numbers vs the numpy oracle (max |delta|)"
ROWS: tuple[Row, ...] = (
    Row("Versions", "framework", lambda r: r["versions"]["framework"], kind=CONTEXT),
    Row("Versions", "python", lambda r: r["versions"]["python"], kind=CONTEXT),
    Row("Versions", "numpy", lambda r: r["versions"]["numpy"], kind=CONTEXT),
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
    Row(
        "The 4->8->1 MLP",
        "default initializer (weights)",
        _init_stats,
        compare=lambda r: r["models"]["mlp"]["init_stats"],
    ),
    Row(
        "The 4->8->1 MLP",
        "gradient before backward",
        lambda r: r["models"]["mlp"]["grad_state_before_backward"],
    ),
    Row("All parameters at once", "listing call", lambda r: _model_facts(r, "mlp")["listing_call"]),
    Row(
        "All parameters at once",
        "entries returned (mlp / tied / nest)",
        lambda r: " / ".join(str(len(_model_facts(r, m)["listing_names"])) for m in ("mlp", "tied", "nest")),
    ),
    Row("NestMLP", "canonical <- native names", _nest_names),
    Row("The tied model", "tie mechanism", lambda r: r["mechanisms"]["tie"]),
    Row(
        "The tied model",
        "layer list length",
        lambda r: f"len({_tied_facts(r)['layer_list_call']}) = {_tied_facts(r)['layer_list_length']}",
        compare=lambda r: _tied_facts(r)["layer_list_length"],
    ),
    Row("The tied model", "distinct layer objects in it", lambda r: _tied_facts(r)["unique_layer_objects"]),
    Row(
        "The tied model",
        "unique parameters (untied model)",
        lambda r: "{unique_params} ({untied_unique_params})".format(**r["models"]["tied"]["ties"]),
    ),
    Row(
        "The tied model",
        "native listings and serializations",
        _serializations,
        compare=lambda r: sorted(len(e) for e in _tied_facts(r)["serializations"].values()),
    ),
    Row(
        "The tied model",
        "same layer / parameter object",
        lambda r: [f"{k}: {v}" for k, v in _tied_facts(r)["tie_identity"].items()],
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
    *(
        Row(ORACLE, model, _max_diffs(model), compare=lambda r, m=model: r["models"][m]["max_abs_diff"])
        for model in ("mlp", "tied", "nest")
    ),
)


CAPABILITIES = "Declared capabilities"


def _capability(record: Record, key: str) -> Mapping[str, Any] | None:
    """From the record if the probe wrote it, else from the backend's declaration."""
    recorded = record.get("capabilities", {}).get(key)
    if recorded is not None:
        return recorded
    declared = declaration(record["backend"]).capabilities.get(key)
    return None if declared is None else {"value": declared.value, "reason": declared.reason}


def _capability_row(key: str) -> Row:
    def extract(r: Record) -> str:
        capability = _capability(r, key)
        if capability is None:
            return "not declared"
        return f"{'yes' if capability['value'] else 'no'}: {capability['reason']}"

    def compare(r: Record) -> Any:
        capability = _capability(r, key)
        return None if capability is None else capability["value"]

    return Row(CAPABILITIES, key.replace("_", " "), extract, compare)


def capability_rows(records: Mapping[str, Record]) -> tuple[Row, ...]:
    """A row per capability that any of these backends declares or records."""
    keys: set[str] = set()
    for name, record in records.items():
        keys |= set(record.get("capabilities", {}))
        try:
            keys |= set(declaration(name).capabilities)
        except DeclarationError:
            pass
    return tuple(_capability_row(key) for key in sorted(keys))


# -- merging ---------------------------------------------------------------------------------------
def close(a: Any, b: Any) -> bool:
    """Equal, with numbers compared within the oracle's tolerance."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


_UNREADABLE = (KeyError, TypeError, IndexError, ValueError, AttributeError, DeclarationError)


def _merge_row(row: Row, records: Mapping[str, Record]) -> dict[str, Any]:
    cells: dict[str, dict[str, Any]] = {}
    compared: list[Any] = []
    for name, record in records.items():
        try:
            cells[name] = {"value": _plain(row.extract(record))}
            compared.append(_plain((row.compare or row.extract)(record)))
        except KeyError as error:
            cells[name] = {"error": f"record lacks {error}"}
        except _UNREADABLE as error:
            cells[name] = {"error": f"unreadable record: {type(error).__name__}: {error}"}
    differs = row.kind == BEHAVIOUR and any(not close(compared[0], other) for other in compared[1:])
    lacks = any("error" in cell for cell in cells.values())
    return {
        "section": row.section,
        "label": row.label,
        "kind": row.kind,
        "cells": cells,
        "differs": differs,
        "mark": DIFFERS if differs else (LACKS if lacks else ""),
    }


def merge(records: Mapping[str, Record]) -> dict[str, Any]:
    """One document from per-backend records. A failed backend keeps its column, empty: it has no
    cell in any row, and its error is in ``failed``."""
    backends = [name for name in backend_names() if name in records]
    failed = {
        name: str(records[name].get("error", "no record")) for name in backends if not records[name].get("ok")
    }
    ok = {name: {**records[name], "backend": name} for name in backends if name not in failed}
    rows = [_merge_row(row, ok) for row in (*ROWS, *STATE_ROWS, *EMBEDDING_ROWS, *capability_rows(ok))]
    claims = [
        _verdict(claim, name, records[name])
        for claim in BOOK_CLAIMS
        for name in backends
        if applies_to(claim, declaration(name).book_tab)
    ]
    return {
        "backends": backends,
        "failed": failed,
        "legend": {**LEGEND, **CLAIMS_LEGEND},
        "rows": rows,
        "claims": claims,
        "claim_counts": {
            s: sum(c["status"] == s for c in claims) for s in (HOLDS, DOES_NOT_HOLD, NOT_EVALUATED)
        },
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


# -- what every format shows, as text ----------------------------------------------------------------
def _printable(text: str) -> str:
    """Control characters from a record (a file, perhaps someone else's) shown escaped."""
    return "".join(ch if ch == "\n" or ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def cell_lines(cell: Mapping[str, Any] | None) -> list[str]:
    """A cell as lines: one per item of a list; none for a backend without a record."""
    if cell is None:
        return []
    if "error" in cell:
        return [_printable(f"error: {cell['error']}")]
    value = cell["value"]
    if isinstance(value, list):
        return [_printable(str(v)) for v in value] or ["(none)"]
    return _printable(str(value)).split("\n")


@dataclass
class ClaimRow:
    tab: str
    section: str
    quote: str
    cells: dict[str, str] = field(default_factory=dict)  # backend -> its verdict, in words
    statuses: dict[str, str] = field(default_factory=dict)

    @property
    def mark(self) -> str:
        return CLAIM_FAILS if DOES_NOT_HOLD in self.statuses.values() else ""


def claim_rows(doc: Mapping[str, Any]) -> list[ClaimRow]:
    """One row per claim, a verdict per backend: n/a where the claim is about another tab."""
    rows: dict[tuple[str, str, str], ClaimRow] = {}
    for check in doc["claims"]:
        key = (check["tab"], check["section"], check["quote"])
        row = rows.setdefault(key, ClaimRow(*key))
        row.statuses[check["backend"]] = check["status"]
        row.cells[check["backend"]] = _printable(_verdict_text(check))
    for row in rows.values():
        for name in doc["backends"]:
            row.statuses.setdefault(name, NOT_APPLICABLE)
            row.cells.setdefault(name, NOT_APPLICABLE)
        row.cells = {name: row.cells[name] for name in doc["backends"]}
    return list(rows.values())


def _verdict_text(check: Mapping[str, Any]) -> str:
    if check["status"] == NOT_EVALUATED:
        return f"not evaluated ({check['detail']})" if check.get("detail") else NOT_EVALUATED
    observed = check.get("detail") or json.dumps(check["observed"])
    return f"observed: {observed} ({check['status']})"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    counts = doc["claim_counts"]
    claims = len({(c["section"], c["quote"]) for c in doc["claims"]})
    lines = [
        f"Book claims: {_plural(claims, 'claim', 'claims')}, "
        f"{_plural(len(doc['claims']), 'check', 'checks')} on "
        f"{_plural(len(doc['backends']), 'backend', 'backends')}: "
        f"{_plural(counts[HOLDS], 'holds', 'hold')}, "
        f"{counts[DOES_NOT_HOLD]} {'does not hold' if counts[DOES_NOT_HOLD] == 1 else 'do not hold'}, "
        f"{counts[NOT_EVALUATED]} not evaluated."
    ]
    if doc["failed"]:
        lines.append(f"Failed: {', '.join(doc['failed'])} (causes above the table).")
    return lines


def verdict_lines(doc: Mapping[str, Any]) -> list[str]:
    """The answer first: which backends ran, what the book's claims came to, and how many
    behaviours differ (each of them then follows in one line: ``differing_lines``)."""
    backends, failed = doc["backends"], doc["failed"]
    compared = [r for r in doc["rows"] if r["kind"] == BEHAVIOUR]
    differing = sum(r["differs"] for r in compared)
    ran = f"Backends: {len(backends) - len(failed)} of {len(backends)} ran"
    return [
        ran + (f"; failed: {', '.join(failed)} (causes below)." if failed else "."),
        *summary_lines({**doc, "failed": {}}),
        f"Behaviours: {differing} of {len(compared)} differ between the backends"
        + (", each in one line:" if differing else "."),
    ]


def differing_lines(doc: Mapping[str, Any]) -> list[str]:
    """Each behaviour that differs, in one line: where it is, then each distinct value with the
    backends that show it (the table below has the details)."""
    lines = []
    for row in doc["rows"]:
        if not row["differs"]:
            continue
        groups: dict[str, list[str]] = {}
        for name, cell in row["cells"].items():
            groups.setdefault("; ".join(cell_lines(cell)), []).append(name)
        values = " | ".join(f"{value} ({', '.join(names)})" for value, names in groups.items())
        lines.append(f"{DIFFERS} {row['section']} / {row['label']}: {values}")
    return lines


def _clipped(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(1, width - 1)] + "…"


def failed_lines(doc: Mapping[str, Any]) -> list[str]:
    """One line per failed backend with its cause, bounded: a saved record is input too."""
    return [one_line(f"{name} failed: {error}") for name, error in doc["failed"].items()]


def _sections(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    out: list[tuple[str, list[Mapping[str, Any]]]] = []
    for row in rows:
        if not out or out[-1][0] != row["section"]:
            out.append((row["section"], []))
        out[-1][1].append(row)
    return out


def _section_title(section: str, rows: Sequence[Mapping[str, Any]]) -> str:
    return f"{section} (context, not compared)" if all(r["kind"] == CONTEXT for r in rows) else section


# -- terminal ----------------------------------------------------------------------------------------
TITLE = "paramparity diff: how the frameworks manage parameters"
CLAIMS_TITLE = "The book, checked (D2L 6.2; each claim evaluated on the installed version)"
LABEL_FLOOR, COLUMN_FLOOR = 24, 20  # narrower than this, the stacked layout reads better
GAP = 2  # between table columns
LABEL_INDENT = "    "  # a wrapped label goes on under its own first word, not under the next label
STYLES = {DIFFERS: "bold yellow", LACKS: "bold magenta", CLAIM_FAILS: "bold red"}
VERDICT_STYLES = {HOLDS: "green", DOES_NOT_HOLD: "bold red", NOT_EVALUATED: "magenta", NOT_APPLICABLE: "dim"}


def terminal_width(requested: int | None = None) -> int:
    """--width, else COLUMNS, else the terminal's width, else DEFAULT_WIDTH."""
    return requested or shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def _paragraph(text: str, width: int, style: str = "", indent: str = "  ") -> Text:
    return Text("\n".join(wrap(text, width, indent)), style=style)


def _legend(entries: Mapping[str, str], width: int) -> list[Text]:
    return [
        _paragraph(f"{mark} = {meaning}", width, STYLES.get(mark, "dim")) for mark, meaning in entries.items()
    ]


def _grouped(cells: Mapping[str, Sequence[str]]) -> list[tuple[str, list[str]]]:
    """Backends with the same text share one entry; "all" when every shown backend does."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, lines in cells.items():
        groups.setdefault(tuple(lines), []).append(name)
    return [
        ("all" if len(names) == len(cells) > 1 else ", ".join(names), list(lines))
        for lines, names in groups.items()
    ]


def _stacked_entry(label: str, lines: Sequence[str], width: int) -> list[str]:
    """``    label: value`` with the value's lines aligned after the label, or below it if long."""
    head = f"    {label}: "
    if len(head) <= max(width // 2, 16):
        room = width - len(head)
        out = [line for value in lines for line in wrap(value, room)] or [""]
        return [head + out[0]] + [" " * len(head) + line for line in out[1:]]
    return wrap(head.rstrip(), width, "      ") + [
        "      " + line for value in lines for line in wrap(value, width - 6)
    ]


def _stacked(
    title: str, rows: Sequence[tuple[str, str, Mapping[str, Sequence[str]]]], width: int, styles: Mapping
) -> Text:
    """Each row as its label, then one ``backends: value`` entry per distinct value."""
    out = Text()
    if title:
        out.append("\n".join(wrap(title, width)) + "\n", style="bold")
    for mark, label, cells in rows:
        start = len(out)
        out.append("\n".join(wrap(f"{mark or ' '} {label}", width)) + "\n", style="bold")
        if mark:
            out.stylize(STYLES.get(mark, ""), start, start + 1)
        for group, lines in _grouped(cells):
            entry = "\n".join(_stacked_entry(group, lines, width))
            out.append(entry + "\n", style=styles.get(lines[0] if lines else "", ""))
    out.rstrip()
    return out


def _table(
    headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str], Sequence[str]]], widths: Sequence[int]
) -> Table:
    """A rich table of pre-wrapped cells; ``rows`` are (mark, cells, styles) with cells already text."""
    table = Table(box=None, padding=(0, GAP // 2), pad_edge=False, show_edge=False, header_style="bold")
    for header, width in zip(headers, widths, strict=True):
        table.add_column("\n".join(wrap(header, width)), width=width, no_wrap=True, overflow="fold")
    for mark, cells, styles in rows:
        texts = []
        for k, (cell, width, style) in enumerate(zip(cells, widths, styles, strict=True)):
            text = Text("\n".join(wrap(cell, width, LABEL_INDENT if k == 0 else INDENT)), style=style)
            if k == 0 and mark:
                text.stylize(STYLES.get(mark, ""), 0, 1)
            texts.append(text)
        table.add_row(*texts)
    return table


def _fit(columns: Sequence[Sequence[str]], width: int, floors: Sequence[int]) -> list[int] | None:
    """Column widths for a table that fits ``width``; None when it would not read well."""
    return fit_columns(columns, width - GAP * (len(columns) - 1), floors, [LABEL_INDENT])


def _behaviour_block(doc: Mapping[str, Any], width: int) -> RenderableType:
    """Section by section: side by side wherever the section's table fits ``width`` (short values
    such as counts and verdicts fit long before native names do), else stacked, one
    ``backends: value`` line per distinct value."""
    backends = doc["backends"]
    headers = ["behaviour", *(f"{b}\n(failed)" if b in doc["failed"] else b for b in backends)]
    blocks: list[RenderableType] = []
    for section, rows in _sections(doc["rows"]):
        title = f"[{_section_title(section, rows)}]"
        body: list[tuple[str, list[str], list[str]]] = [
            ("", [title, *[""] * len(backends)], ["bold"] * (len(backends) + 1))
        ]
        for row in rows:
            cells = [row["cells"].get(b) for b in backends]
            texts = ["\n".join(cell_lines(cell)) for cell in cells]
            styles = ["magenta" if cell and "error" in cell else "" for cell in cells]
            body.append((row["mark"], [f"{row['mark'] or ' '} {row['label']}", *texts], ["", *styles]))
        columns = [[headers[k], *(cells[k] for _, cells, _ in body)] for k in range(len(headers))]
        widths = _fit(columns, width, [LABEL_FLOOR, *[COLUMN_FLOOR] * len(backends)])
        if widths is not None:
            blocks.append(_table(headers, body, widths))
            continue
        stacked = [
            (row["mark"], row["label"], {b: cell_lines(c) for b, c in row["cells"].items()}) for row in rows
        ]
        blocks.append(_stacked(title, stacked, width, {}))
    return Group(*blocks)


def _claims_block(doc: Mapping[str, Any], width: int) -> RenderableType:
    backends, rows = doc["backends"], claim_rows(doc)
    headers = ["sec", "claim", *backends]
    body = [
        (
            row.mark,
            [f"{row.mark or ' '} {row.section}", row.quote, *row.cells.values()],
            ["", "", *(VERDICT_STYLES[row.statuses[b]] for b in backends)],
        )
        for row in rows
    ]
    columns = [[headers[k], *(cells[k] for _, cells, _ in body)] for k in range(len(headers))]
    widths = _fit(columns, width, [8, LABEL_FLOOR, *[COLUMN_FLOOR] * len(backends)])
    if widths is not None:
        return _table(headers, body, widths)
    styles = {
        text: VERDICT_STYLES[s]
        for row in rows
        for text, s in zip(row.cells.values(), row.statuses.values(), strict=True)
    }
    # Stacked, a claim lists the backends it applies to: "n/a" lines would say only that it is
    # about another tab, which the legend says once.
    stacked = [
        (
            row.mark,
            f"{row.section} {row.quote}",
            {b: [t] for b, t in row.cells.items() if row.statuses[b] != NOT_APPLICABLE},
        )
        for row in rows
    ]
    return _stacked("", stacked, width, styles)


def terminal_renderables(doc: Mapping[str, Any], width: int) -> list[RenderableType]:
    parts: list[RenderableType] = [_paragraph(TITLE, width, "bold")]
    parts += [_paragraph(line, width, "bold", indent="") for line in verdict_lines(doc)]
    parts += [Text(_clipped(line, width), STYLES[DIFFERS], no_wrap=True) for line in differing_lines(doc)]
    parts += [Text("")]
    parts += _legend(LEGEND, width)
    parts += [_paragraph(CONTEXT_NOTE, width, "dim")]
    if doc["failed"]:
        parts += [_paragraph(FAILED_NOTE, width, "dim")]
        parts += [_paragraph(line, width, "bold red") for line in failed_lines(doc)]
    parts += [Text(""), _behaviour_block(doc, width), Text(""), _paragraph(CLAIMS_TITLE, width, "bold")]
    parts += _legend(CLAIMS_LEGEND, width)
    parts += [Text(""), _claims_block(doc, width), Text("")]
    parts += [_paragraph(line, width) for line in summary_lines(doc)]
    return [Group(*parts)]


def render_terminal(doc: Mapping[str, Any], width: int | None = None) -> str:
    """The terminal view as plain text, at most ``width`` (default: terminal_width()) columns."""
    width = terminal_width(width)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False, emoji=False, markup=False)
    console.print(*terminal_renderables(doc, width))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def print_terminal(doc: Mapping[str, Any], width: int | None = None, console: Console | None = None) -> None:
    """In colour on a terminal; plain text (no trailing blanks) anywhere else."""
    width = terminal_width(width)
    console = console or Console(width=width, highlight=False, emoji=False, markup=False)
    if console.is_terminal:
        console.print(*terminal_renderables(doc, width))
    else:
        console.file.write(render_terminal(doc, width))


# -- markdown ----------------------------------------------------------------------------------------
_MD_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\n": "<br>"}


def md(text: str) -> str:
    """``text`` as the literal content of a Markdown table cell."""
    out = []
    for ch in _printable(str(text)):
        if ch in _MD_ESCAPES:
            out.append(_MD_ESCAPES[ch])
        elif ch in "\\`*_[]|~#!":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md(cell) for cell in row) + " |" for row in rows]
    return lines


def render_markdown(doc: Mapping[str, Any]) -> str:
    backends = doc["backends"]
    out = ["# paramparity diff", ""]
    out += [md(line) + "  " for line in verdict_lines(doc)] + [""]
    out += [f"- {md(line)}" for line in differing_lines(doc)] + ([""] if differing_lines(doc) else [])
    out += [f"- **{md(mark)}** = {md(meaning)}" for mark, meaning in LEGEND.items()]
    out += [f"- {md(CONTEXT_NOTE)}", ""]
    if doc["failed"]:
        out += [md(FAILED_NOTE), ""] + [f"- {md(line)}" for line in failed_lines(doc)] + [""]
    headers = ["", "behaviour", *(f"{b} (failed)" if b in doc["failed"] else b for b in backends)]
    for section, rows in _sections(doc["rows"]):
        out += [f"## {md(_section_title(section, rows))}", ""]
        out += _md_table(
            headers,
            [
                [row["mark"], row["label"], *("\n".join(cell_lines(row["cells"].get(b))) for b in backends)]
                for row in rows
            ],
        )
        out.append("")
    out += ["## The book, checked", ""]
    out += [f"- **{md(mark)}** = {md(meaning)}" for mark, meaning in CLAIMS_LEGEND.items()]
    out.append("")
    out += _md_table(
        ["", "section", "claim", *backends],
        [[row.mark, row.section, row.quote, *row.cells.values()] for row in claim_rows(doc)],
    )
    out += [""] + [md(line) for line in summary_lines(doc)]
    return "\n".join(out) + "\n"


# -- html --------------------------------------------------------------------------------------------
HTML_STYLE = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;margin:0;padding:1rem 1.5rem}
h1{font-size:1.4rem;margin:.2rem 0 .6rem}h2{font-size:1.15rem;margin:1.8rem 0 .5rem}
ul.legend{padding-left:1.2rem;margin:.3rem 0}ul.failed{color:#b42318;font-weight:600}
table{border-collapse:collapse;width:100%;table-layout:fixed;margin:0 0 1rem}
th,td{border:1px solid #d0d7de;padding:4px 6px;vertical-align:top;text-align:left;overflow-wrap:anywhere;
word-break:normal}
thead th{background:#f6f8fa}
col.mark{width:1.8rem}col.label{width:15rem}col.sec{width:4.5rem}col.claim{width:17rem}col.failed{width:6rem}
td .v{display:block;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap}
tr.section th{background:#eef3fb;font-size:1rem}.nw{white-space:nowrap}
td.mark{font-weight:700;text-align:center}tr.m-differs td.mark{color:#b45309;background:#fff7e6}
tr.m-lacks td.mark{color:#86198f}td.error .v{color:#86198f}
td.absent{background:repeating-linear-gradient(45deg,#fafafa,#fafafa 6px,#f0f0f0 6px,#f0f0f0 12px)}
td.holds{background:#e7f7ec}td.fails{background:#fde8e8;font-weight:600}td.na{color:#8c959f}
td.notev{background:#f5e8fb}tr.m-fails td.mark{color:#b42318}
nav.contents{position:sticky;top:0;z-index:1;background:#fff;border-bottom:1px solid #d0d7de;padding:.4rem 0;
display:flex;flex-wrap:wrap;gap:.3rem .9rem;font-size:13px}nav.contents a{color:#0969da;text-decoration:none}
.verdict p{margin:.15rem 0;font-weight:600}ul.differs{margin:.3rem 0 .8rem;padding-left:1.2rem;color:#8a4b00}
ul.differs li{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
tr.section,h2{scroll-margin-top:4.5rem}
@media (max-width:900px){
 table,thead,tbody,tr,th,td{display:block;width:auto}colgroup,thead{display:none}
 tr{border:1px solid #d0d7de;border-top:none;padding:4px 6px}tr.section{border:none;margin-top:1rem}
 th,td{border:none;padding:2px 0}td.mark{display:inline;padding-right:.4rem}td.mark:empty{display:none}
 th.label,td.label{display:inline;font-weight:600}td.label+td.label{margin-left:.5rem}
 td[data-backend]{display:flex;gap:.6rem}td[data-backend]>div{flex:1;min-width:0}
 td[data-backend]::before{content:attr(data-backend);flex:0 0 6.5rem;font-size:12px;font-weight:600;
  color:#57606a}
 td.absent{display:none}td.na{display:none}
}
"""


def _h(text: str) -> str:
    """Escaped for HTML, with a line-break opportunity after every separator of a name, and none
    inside a shape."""
    out, text = [], _printable(str(text))
    for k, part in enumerate(re.split(f"({SHAPE.pattern})", text)):
        if k % 2:
            out.append(f"<span class='nw'>{html.escape(part)}</span>")
        else:
            out.append("<wbr>".join(html.escape(piece) for piece in pieces(part)))
    return "".join(out)


def _h_cell(lines: Sequence[str]) -> str:
    return "<div>" + "".join(f'<span class="v">{_h(line)}</span>' for line in lines) + "</div>"


_MARK_CLASSES = {DIFFERS: "m-differs", LACKS: "m-lacks", CLAIM_FAILS: "m-fails"}
_VERDICT_CLASSES = {HOLDS: "holds", DOES_NOT_HOLD: "fails", NOT_EVALUATED: "notev", NOT_APPLICABLE: "na"}


def _html_legend(entries: Mapping[str, str], notes: Sequence[str] = ()) -> str:
    items = [f"<li><b>{html.escape(m)}</b> = {html.escape(text)}</li>" for m, text in entries.items()]
    items += [f"<li>{html.escape(note)}</li>" for note in notes]
    return f"<ul class='legend'>{''.join(items)}</ul>"


def _html_table(
    name: str, heads: Sequence[str], label_cols: Sequence[str], backend_cols: Sequence[str]
) -> str:
    cols = "".join(f"<col class='{c}'>" for c in [*label_cols, *backend_cols])
    cells = "".join(f"<th>{head}</th>" for head in heads)
    return f"<table class='{name}'><colgroup>{cols}</colgroup><thead><tr>{cells}</tr></thead><tbody>"


def _html_row(mark: str, labels: Sequence[str], cells: Sequence[tuple[str, str, str]]) -> str:
    """A row: its mark, its label cells (HTML), then (backend, css class, HTML) per backend."""
    tds = "".join(f"<td class='label'>{label}</td>" for label in labels)
    tds += "".join(
        f"<td class='{css}' data-backend='{html.escape(b)}'>{inner}</td>" for b, css, inner in cells
    )
    return f"<tr class='{_MARK_CLASSES.get(mark, '')}'><td class='mark'>{html.escape(mark)}</td>{tds}</tr>"


def render_html(doc: Mapping[str, Any]) -> str:
    backends = doc["backends"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>paramparity diff</title><style>{HTML_STYLE}</style></head><body>",
        "<h1>paramparity diff</h1>",
        _html_contents(doc),
        "<div id='verdict' class='verdict'>" + "".join(f"<p>{_h(line)}</p>" for line in verdict_lines(doc)),
        "<ul class='differs'>"
        + "".join(
            f"<li title='{html.escape(line, quote=True)}'>{html.escape(line)}</li>"
            for line in differing_lines(doc)
        )
        + "</ul></div>",
        _html_legend(LEGEND, [CONTEXT_NOTE] + ([FAILED_NOTE] if doc["failed"] else [])),
    ]
    if doc["failed"]:
        parts.append(
            "<ul class='failed'>" + "".join(f"<li>{_h(f)}</li>" for f in failed_lines(doc)) + "</ul>"
        )
    heads = [f"{html.escape(b)}{' (failed)' if b in doc['failed'] else ''}" for b in backends]
    columns = ["failed" if b in doc["failed"] else "backend" for b in backends]
    parts.append(_html_table("diff", ["", "behaviour", *heads], ["mark", "label"], columns))
    for section, rows in _sections(doc["rows"]):
        title = html.escape(_section_title(section, rows))
        parts.append(
            f"<tr class='section' id='{_anchor(section)}'><th colspan='{len(backends) + 2}'>{title}</th></tr>"
        )
        for row in rows:
            cells = [
                (b, _cell_class(row["cells"].get(b)), _h_cell(cell_lines(row["cells"].get(b))))
                for b in backends
            ]
            parts.append(_html_row(row["mark"], [_h(row["label"])], cells))
    parts.append("</tbody></table><h2 id='claims'>The book, checked</h2>" + _html_legend(CLAIMS_LEGEND))
    heads = ["", "section", "claim", *(html.escape(b) for b in backends)]
    parts.append(_html_table("claims", heads, ["mark", "sec", "claim"], ["backend"] * len(backends)))
    for row in claim_rows(doc):
        cells = [(b, _VERDICT_CLASSES[row.statuses[b]], f"<div>{_h(t)}</div>") for b, t in row.cells.items()]
        parts.append(_html_row(row.mark, [html.escape(row.section), _h(row.quote)], cells))
    parts.append("</tbody></table>")
    parts += [f"<p>{html.escape(line)}</p>" for line in summary_lines(doc)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _anchor(section: str) -> str:
    return "s-" + re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")


def _html_contents(doc: Mapping[str, Any]) -> str:
    """A contents bar that stays at the top: the verdict, every section, the book's claims."""
    links = [("verdict", "Verdict")]
    links += [(_anchor(section), section) for section, _ in _sections(doc["rows"])]
    links += [("claims", "The book, checked")]
    return (
        "<nav class='contents'>"
        + "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t in links)
        + "</nav>"
    )


def _cell_class(cell: Mapping[str, Any] | None) -> str:
    return "absent" if cell is None else ("error" if "error" in cell else "value")


def render_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


RENDERERS = {
    "terminal": render_terminal,
    "json": render_json,
    "markdown": render_markdown,
    "html": render_html,
}


# -- files -------------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> Path:
    """``text`` in ``path`` through a temporary file beside it: a reader sees the old file or the
    new one, never half of one."""
    return write_atomically(path, text)


def write_report(doc: Mapping[str, Any], fmt: str, out_dir: Path = REPORTS) -> Path:
    path = out_dir / f"diff.{EXTENSIONS[fmt]}"
    try:
        return write_atomic(path, RENDERERS[fmt](doc))
    except OSError as error:  # a full disk: one line, and the previous report stays whole
        raise unwritable(path, error, "--out-dir") from None


def earlier_records(out_dir: Path, keep: set[str]) -> dict[str, Record]:
    """The saved records of the backends in ``keep`` (those a partial run did not probe), so that
    ``--backends torch`` after a full run updates torch's record and loses no other. A saved file
    that cannot be read is left out with a warning: the run's own records still count."""
    path = out_dir / RECORDS_FILE
    if not keep or not path.exists():
        return {}
    try:
        saved = load_records([path])
    except UsageError as error:
        print(f"paramparity: warning: not keeping earlier records: {error}", file=sys.stderr)
        return {}
    kept = {name: saved[name] for name in backend_names() if name in keep and name in saved}
    if kept:
        print(f"kept the earlier records of {', '.join(kept)} from {_shown(path)}", file=sys.stderr)
    return kept


def load_records(paths: Sequence[str | Path], warn=sys.stderr) -> dict[str, Record]:
    """The records in saved diff.json files (or single probe records); later files win per backend."""
    merged: dict[str, Record] = {}
    for path in map(Path, paths):
        # Bounded: a regular file (a FIFO would hang), limited size and nesting, linear-time checks.
        data = read_json_file(path, max_bytes=MAX_RECORDS_BYTES, what="--from", allow_nonfinite=True)
        if isinstance(data, dict) and isinstance(data.get("records"), dict):
            found = data["records"]
        elif isinstance(data, dict) and isinstance(data.get("backend"), str) and "ok" in data:
            found = {data["backend"]: data}
        else:
            raise UsageError(
                f"--from {printable(path)}: neither a diff.json (an object with 'records') "
                "nor a probe record (an object with 'backend' and 'ok')"
            )
        for name, record in found.items():
            if not isinstance(record, dict):
                raise UsageError(f"--from {printable(path)}: the record of {shown(name)} is not an object")
            try:
                merged[canonical_backend(str(name))] = record
            except UsageError as error:
                warning = f"paramparity: --from {printable(path)}: skipping a record: {error}"
                print(one_line(warning), file=warn)
    return merged


# -- running the probes ----------------------------------------------------------------------------
PROBE = module_command("common.commands.probe")


@dataclass
class _Probe:
    text: str = "waiting"
    started: float | None = None
    ended: float | None = None
    ok: bool | None = None
    spinner: Spinner = field(default_factory=lambda: Spinner("dots", style="cyan"))


class ProbeProgress:
    """Live progress of the probes: one line per backend with its elapsed time and final state.

    It is the stream fanout.run_parallel writes its ``[backend] message`` lines to; rich.Live
    redraws it.
    """

    LINE = re.compile(r"^\[(?P<backend>[^\]]+)\] (?P<text>.*)$")

    def __init__(self, backends: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.probes = {name: _Probe() for name in backends}
        self._buffer = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self.update(line)
        return len(text)

    def flush(self) -> None:
        pass

    def update(self, line: str) -> None:
        match = self.LINE.match(line)
        if not match or match["backend"] not in self.probes:
            return
        probe, text, now = self.probes[match["backend"]], match["text"], self.clock()
        probe.started = probe.started if probe.started is not None else now
        if text.startswith("done"):
            probe.text, probe.ok, probe.ended = "done", True, now
        elif text.startswith("FAILED"):
            probe.text, probe.ok, probe.ended = text.removeprefix("FAILED: "), False, now
        else:
            probe.text = text

    def __rich__(self) -> Table:
        table = Table.grid(padding=(0, 1))
        table.add_column(width=1)
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_column(no_wrap=True, overflow="ellipsis")
        now = self.clock()
        for name, probe in self.probes.items():
            elapsed = "" if probe.started is None else f"{(probe.ended or now) - probe.started:.1f}s"
            if probe.ok is None:
                state: RenderableType = probe.spinner if probe.started is not None else Text("·", "dim")
                text = Text(probe.text)
            else:
                state = Text("✓", "green") if probe.ok else Text("✗", "bold red")
                text = Text("done", "green") if probe.ok else Text(f"failed: {probe.text}", "red")
            table.add_row(state, name, elapsed, text)
        return table


def run_probes(
    backends: Sequence[str],
    command: Command = PROBE,
    stream=None,
    console: Console | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Record]:
    """Every backend's record. Progress: a live display on a terminal, else plain lines to
    ``stream`` (default stderr)."""
    if command is PROBE:
        prepare_envs(backends)
    console = console or Console(stderr=True)
    if stream is not None or not console.is_terminal:
        return run_parallel(backends, command, stream or sys.stderr, what="probing", timeout=timeout)
    progress = ProbeProgress(backends)
    with Live(progress, console=console, refresh_per_second=8, transient=False):
        return run_parallel(backends, command, progress, what="probing", timeout=timeout)


# -- the command -------------------------------------------------------------------------------------
def _width(text: str) -> int:
    try:
        width = int(text)
    except ValueError:
        width = 0
    if width < 20:
        raise argparse.ArgumentTypeError(f"--width={text}, but should be a number of columns >= 20")
    return width


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "diff",
        help="side-by-side report of how the frameworks behave",
        description="Run one behaviour probe per backend (each in its own .venvs/<backend>, in parallel), "
        f"save the records to reports/{RECORDS_FILE}, merge them into one table and check the book's "
        "claims. Exit 1 if any backend failed.",
    )
    add_backends_option(parser)
    add_timeout_option(parser)
    parser.add_argument(
        "--format",
        default="terminal",
        choices=(*FORMATS, "all"),
        help="terminal prints; json/markdown/html write reports/diff.<ext>; all does every one",
    )
    parser.add_argument(
        "--from",
        dest="from_files",
        nargs="+",
        metavar="FILE",
        help=f"render saved records ({RECORDS_FILE} files) instead of probing; no framework is needed; "
        "several files merge, later files winning per backend",
    )
    parser.add_argument(
        "--width",
        type=_width,
        help=f"terminal width (default: COLUMNS, else the terminal's, else {DEFAULT_WIDTH})",
    )
    parser.add_argument("--out-dir", type=Path, default=REPORTS, help="where reports go (default: reports/)")
    parser.set_defaults(run=run_diff)
    _refuse_unknown_arguments(parser)


def _refuse_unknown_arguments(parser: argparse.ArgumentParser) -> None:
    """Unknown arguments end in this command's usage (exit 2), not the top-level one."""
    parse_known_args = parser.parse_known_args

    def strict(args=None, namespace=None):
        namespace, unknown = parse_known_args(args, namespace)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return namespace, unknown

    parser.parse_known_args = strict


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_diff(args: argparse.Namespace) -> int:
    if not args.from_files or args.format != "terminal":
        writable_folder(args.out_dir, "--out-dir")  # before the probes run, not after
    if args.from_files:
        records = load_records(args.from_files)
        if args.backends.strip().lower() != "all":
            records = {name: records[name] for name in parse_backend_list(args.backends) if name in records}
        if not records:
            raise UsageError(f"--from {' '.join(args.from_files)}: no record of a selected backend")
    else:
        selected = parse_backend_list(args.backends)
        records = run_probes(selected, timeout=args.timeout)
        records = {**earlier_records(args.out_dir, keep=set(backend_names()) - set(selected)), **records}
        records = {name: records[name] for name in backend_names() if name in records}  # report order
    doc = merge(records)
    formats = FORMATS if args.format == "all" else (args.format,)
    files = [
        fmt
        for fmt in FORMATS
        if fmt in EXTENSIONS
        and (
            fmt in formats
            or fmt == "json"
            and not args.from_files
            # a format written earlier is written again: no stale diff.html beside a newer diff.json
            or not args.from_files
            and (args.out_dir / f"diff.{EXTENSIONS[fmt]}").exists()
        )
    ]
    written = [write_report(doc, fmt, args.out_dir) for fmt in files]
    if "terminal" in formats:
        print_terminal(doc, args.width)
    else:
        print("\n".join(verdict_lines(doc) + differing_lines(doc) + failed_lines(doc)))
    for path in written:
        print(f"wrote {_shown(path)}")
    return 1 if doc["failed"] else 0
