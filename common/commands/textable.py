"""Plain-text tables for the terminal, shared by every command's summary, and the wrapping and
column fitting the diff uses to fit any terminal width.

Text wraps at spaces, and a word too long for a line after its separators (".", "/", "_"), never
elsewhere: ``layers.0.weight`` may break after a dot, ``1.7e-09`` never does (a dot between two
digits is not a separator), nor does a shape such as ``(8, 4)``. Only a word longer than the whole
width is cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

INDENT = "  "  # starts the continuation lines of a wrapped line
_BREAK = re.compile(r"(?<=[/_ ])|(?<=\D\.)|(?<=\.)(?=\D)")
SHAPE = re.compile(r"\(-?\d+(?:, -?\d+)*,?\)")  # (8, 4), (8,), (8, -1): kept whole
_GLUE = "\ue000"  # a space inside a shape, while wrapping


def pieces(line: str) -> list[str]:
    """``line`` split after each separator; joined back they give ``line``."""
    return [piece for piece in _BREAK.split(line) if piece]


def _wrap_line(line: str, width: int, indent: str) -> list[str]:
    """Greedy on words; a word too long for a line of its own breaks after separators."""
    out: list[str] = []
    current, room = "", width

    def new_line() -> None:
        nonlocal current, room
        out.append(current.rstrip())
        current, room = "", width - len(indent)

    for word in re.split(r"(?<= )(?=\S)", line):
        if len(current) + len(word.rstrip()) <= room:
            current += word
            continue
        if current.strip():
            new_line()
        if len(word.rstrip()) <= room:
            current = word
            continue
        for piece in pieces(word):
            if len(current) + len(piece.rstrip()) > room and current:
                new_line()
            while len(piece.rstrip()) > room:  # longer than a whole line: the only cut inside a word
                out.append(piece[:room])
                piece, room = piece[room:], width - len(indent)
            current += piece
    out.append(current.rstrip())
    return out[:1] + [indent + line for line in out[1:]]


def _glued(text: str) -> str:
    return SHAPE.sub(lambda match: match[0].replace(" ", _GLUE), text)


def wrap(text: str, width: int, indent: str = INDENT) -> list[str]:
    """Lines of at most ``width`` characters. Each "\\n"-separated line of ``text`` starts a new
    line; one too long breaks and goes on, indented by ``indent``."""
    width = max(width, len(indent) + 1)
    lines = _glued(str(text)).split("\n")
    return [out.replace(_GLUE, " ") for line in lines for out in _wrap_line(line, width, indent)]


def min_width(text: str, indent: str = INDENT) -> int:
    """The narrowest width at which ``text`` wraps without cutting a word."""
    need = 1
    for line in _glued(str(text)).split("\n"):
        words = [piece.strip() for piece in pieces(line)] or [""]
        need = max(need, len(words[0]), *(len(indent) + len(word) for word in words[1:]))
    return need


def natural_width(text: str) -> int:
    return max((len(line) for line in str(text).split("\n")), default=0)


def fit_columns(
    columns: Sequence[Sequence[str]], room: int, floors: Sequence[int] = (), indents: Sequence[str] = ()
) -> list[int] | None:
    """Widths for columns of cells that sum to at most ``room``, or None if they cannot.

    Each column gets at least the width its longest word needs (wrapped lines go on after its
    indent) and at least its floor (or its natural width, if that is smaller); the rest is shared
    so the widest columns give up width first.
    """
    floors = list(floors) + [0] * (len(columns) - len(floors))
    indents = list(indents) + [INDENT] * (len(columns) - len(indents))
    naturals = [max((natural_width(c) for c in column), default=0) for column in columns]
    needs = [
        max(max((min_width(c, indent) for c in column), default=1), min(natural, floor))
        for column, natural, floor, indent in zip(columns, naturals, floors, indents, strict=True)
    ]
    if sum(needs) > room:
        return None
    low, high = 0, max(naturals, default=0)
    while low < high:  # the largest cap on any column's width that still fits
        cap = (low + high + 1) // 2
        if sum(max(n, min(w, cap)) for n, w in zip(needs, naturals, strict=True)) <= room:
            low = cap
        else:
            high = cap - 1
    return [max(n, min(w, low)) for n, w in zip(needs, naturals, strict=True)]


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], marks: Sequence[str] = (), max_width: int = 48
) -> str:
    """Left-aligned columns. A cell may hold several lines ("\\n"); lines longer than ``max_width``
    wrap at separators. ``marks`` gives one prefix per row (e.g. "*" for a disagreement)."""

    def split(cell: object) -> list[str]:
        return wrap(str(cell), max_width)

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
