"""Errors that mean "the user's input was bad". Command-line entry points turn them into one line
on stderr and exit code 2; everything else is a bug and keeps its traceback.

Every message is capped where the error is made (``one_line``): one line, no control character,
at most MAX_MESSAGE characters with the middle elided, so a value echoed from hostile input (a
10 MB layer name, a list of 20,000 positions) cannot flood a terminal or a log, and both ends,
where the file and the cause usually are, survive.
"""

from __future__ import annotations

USAGE_EXIT_CODE = 2
MAX_LINE = 500  # the longest error line paramparity prints
MAX_MESSAGE = MAX_LINE - len("paramparity: error: ")


def one_line(text: object, limit: int = MAX_LINE) -> str:
    """``text`` as one printable line of at most ``limit`` characters (at least 80): if it holds
    anything ``str.isprintable`` refuses, it is written with Python's escapes; a longer text keeps
    its head and tail around a note of how many characters were left out. Idempotent, so wrapping
    a capped message again changes nothing. Linear in the text's length."""
    text = text if isinstance(text, str) else str(text)
    plain = text.isprintable()
    if plain and len(text) <= limit:
        return text
    if not plain and len(text) <= limit:
        escaped = repr(text)[1:-1]  # repr escapes exactly what isprintable refuses (and backslashes)
        if len(escaped) <= limit:
            return escaped
    room = limit - len(f" ...({len(text)} characters elided)... ")
    head, used_head = _escaped_end(text, (room + 1) // 2, plain, reverse=False)
    tail, used_tail = _escaped_end(text, room // 2, plain, reverse=True)
    return f"{head} ...({len(text) - used_head - used_tail} characters elided)... {tail}"


def _escaped_end(text: str, room: int, plain: bool, *, reverse: bool) -> tuple[str, int]:
    """The longest start (or end) of ``text`` that fits ``room`` characters once escaped, and how
    many characters of ``text`` it holds."""
    if plain:
        return (text[len(text) - room :] if reverse else text[:room]), room
    pieces, size, count = [], 0, 0
    for char in reversed(text) if reverse else text:
        piece = char if char.isprintable() and char != "\\" else repr(char)[1:-1]
        if size + len(piece) > room:
            break
        pieces.append(piece)
        size += len(piece)
        count += 1
    return "".join(reversed(pieces) if reverse else pieces), count


class ParityError(Exception):
    """Base class for every error paramparity raises on purpose; its message is capped."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(message, MAX_MESSAGE), *args)


class UsageError(ParityError):
    """Bad input from the user: an env var, a command-line flag, a missing environment."""


class SpecError(UsageError):
    """An invalid model spec. Raised before any framework call, identically for every backend."""


class ParamFileError(UsageError):
    """A parameter file or value set that cannot be loaded. The model is left untouched."""


class BackendUnavailable(UsageError):
    """The selected backend's framework cannot be imported in this environment."""
