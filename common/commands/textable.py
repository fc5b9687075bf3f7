"""Plain-text tables for the terminal, shared by every command's summary."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], marks: Sequence[str] = (), max_width: int = 48
) -> str:
    """Left-aligned columns. A cell may hold several lines ("\\n"); lines longer than ``max_width``
    wrap. ``marks`` gives one prefix per row (e.g. "*" for a disagreement)."""

    def split(cell: object) -> list[str]:
        lines = []
        for line in str(cell).split("\n"):
            lines += textwrap.wrap(line, max_width, subsequent_indent="  ", break_on_hyphens=False) or [""]
        return lines

    table = [[split(h) for h in headers]] + [[split(c) for c in row] for row in rows]
    widths = [max(len(line) for row in table for line in row[i]) for i in range(len(headers))]
    prefix_width = max((len(m) for m in marks), default=0)
    marks = list(marks) + [""] * (len(rows) - len(marks))

    def render(row: list[list[str]], mark: str) -> list[str]:
        height = max(len(cell) for cell in row)
        out = []
        for k in range(height):
            cells = [
                (cell[k] if k < len(cell) else "").ljust(width)
                for cell, width in zip(row, widths, strict=True)
            ]
            prefix = (mark if k == 0 else "").ljust(prefix_width)
            out.append((prefix + "  ".join(cells)).rstrip())
        return out

    lines = render(table[0], "") + [" " * prefix_width + "  ".join("-" * w for w in widths)]
    for row, mark in zip(table[1:], marks, strict=True):
        lines += render(row, mark)
    return "\n".join(lines)
