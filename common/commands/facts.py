"""`paramparity facts`: tables generated from the backends' declarations, for the README.

The README holds each table between ``<!-- facts:NAME -->`` markers, and a test checks that it
is what this command prints now: the docs cannot drift from the declared facts, which the suite
itself checks against each framework's behaviour.
"""

from __future__ import annotations

import argparse

from common.declarations import declarations

MOMENTUM_NOTE = "weight of the new batch"
UPDATES = {
    "forward": "in the forward, each use in order",
    "backward": "in the backward, last use first, only where it reaches",
}
DEBIAS = {"none": "as they are", "use_count": "divided by 1 - (1 - momentum)^uses"}


def state_table() -> str:
    """State kinds and freeze semantics per backend: its BatchNorm conventions, or why none."""
    rows = [
        "| backend | BatchNorm | default momentum (" + MOMENTUM_NOTE + ") | default eps | running variance "
        "| a frozen BatchNorm while training | statistics written | inference reads them | freezing |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in declarations():
        batchnorm, freezing = entry.capability("batchnorm"), entry.capability("freezing")
        if batchnorm.value:
            facts = entry.facts
            cells = [
                "yes",
                f"{facts['batchnorm_momentum']:g}",
                f"{facts['batchnorm_eps']:g}",
                facts["batchnorm_running_var"],
                {"training": "batch statistics, updated", "inference": "inference mode, not updated"}[
                    facts["frozen_batchnorm"]
                ],
                UPDATES[facts["batchnorm_statistics_update"]],
                DEBIAS[facts["batchnorm_inference_debias"]],
            ]
        else:
            cells = [f"no: {batchnorm.reason}", "", "", "", "", "", ""]
        cells.append(freezing.reason if freezing.value else f"no: {freezing.reason}")
        rows.append(f"| `{entry.name}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


TABLES = {"state": state_table}


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "facts",
        help="print a table generated from the declarations (for the README)",
        description="Print a markdown table generated from backends/*/backend.toml.",
    )
    parser.add_argument("table", nargs="?", default="state", choices=sorted(TABLES))
    parser.set_defaults(run=run_facts)


def run_facts(args: argparse.Namespace) -> int:
    print(TABLES[args.table]())
    return 0
