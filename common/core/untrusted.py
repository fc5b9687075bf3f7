"""Helpers for text and files that come from outside: users import parameter files and spec files
from anywhere, so every name and value in them is hostile until checked.

- ``printable``: one line, no control characters, no ANSI escapes, no lone surrogates, bounded
  length; used for every name, path and value that reaches an error or the terminal.
- ``load_json``: ``json.loads`` with limits on nesting depth, integer size and duplicate keys, so a
  hostile document is a ``ValueError`` with one readable line, never a RecursionError; every check
  runs in time linear in the text's length.
- ``read_json_file``: a regular file of bounded size, through ``load_json``.
- ``open_regular``: open a path without hanging (FIFOs) or reading without bound (devices),
  refusing anything that is not a regular file of bounded size; ``descriptor_path`` names the
  opened file for a reader that takes a path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from typing import Any

import numpy as np

from common.errors import UsageError

MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 20  # anything longer cannot be a size or a count (2**64 has 20 digits)
DEFAULT_TEXT_LIMIT = 500


def printable(text: object, limit: int | None = DEFAULT_TEXT_LIMIT) -> str:
    """``text`` as one printable line: if it holds anything ``str.isprintable`` refuses (control
    characters such as newlines and ESC, format characters, lone surrogates), it is written with
    Python's escapes (``\\n``, ``\\x1b``, ``\\ud800``); more than ``limit`` characters are cut,
    saying how many were left out."""
    text = text if isinstance(text, str) else str(text)
    suffix = ""
    if limit is not None and len(text) > limit:
        suffix = f"...({len(text) - limit} more characters)"
        text = text[:limit]
    if not text.isprintable():
        text = repr(text)[1:-1]  # repr escapes exactly what isprintable refuses (and backslashes)
    return text + suffix


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters: for values from a file inside an error message
    (repr escapes every non-printable character, in strings nested at any depth)."""
    return printable(repr(value), limit)


def cause_line(message: str, limit: int = 200) -> str:
    """The line of an error message that says what went wrong. Most messages lead with it; some
    (MXNet's) embed a traceback and end with it."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].startswith("Traceback"):
        frames = ("File ", "[bt]", "Stack trace", "Traceback", "^", "~")
        meaningful = [line for line in lines if not line.startswith(frames)]
        lines = meaningful[-1:] or lines[-1:]
    return printable(lines[0], limit)


# -- bounded JSON --------------------------------------------------------------------------------
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1
_SCAN_CHUNK = 1 << 20  # bytes per step: bounds the scanner's memory whatever the text's size


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of arrays and objects in ``text`` (brackets inside strings do not
    count). One pass over the bytes, in chunks, with no regex and no recursion: linear time in the
    text's length and memory bounded by the chunk, whatever the text holds (an unclosed string
    of escaped quotes cost a backtracking regex quadratic time). Where the text stops being JSON
    the count may be off, but the parser refuses the text there, before reaching that depth."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    depth = deepest = 0
    in_string = False
    backslashes = 0  # the run of backslashes that ended the previous chunk
    for start in range(0, len(data), _SCAN_CHUNK):
        chunk = np.frombuffer(data, np.uint8, min(_SCAN_CHUNK, len(data) - start), start)
        # A quote delimits a string unless an odd run of backslashes escapes it. UTF-8 never
        # uses these ASCII bytes inside a multi-byte character, so bytes are safe to scan.
        index = np.arange(chunk.size)
        last_other = np.maximum.accumulate(np.where(chunk != _BACKSLASH, index, -1))
        quotes = np.flatnonzero(chunk == _QUOTE)
        before = last_other[np.maximum(quotes - 1, 0)]
        before[quotes == 0] = -1
        runs = quotes - 1 - before + np.where(before < 0, backslashes, 0)
        delimiters = quotes[runs % 2 == 0]
        brackets = np.flatnonzero(_BRACKET_STEP[chunk])
        # a bracket is outside every string when an even number of delimiters precede it
        outside = (np.searchsorted(delimiters, brackets) + in_string) % 2 == 0
        steps = _BRACKET_STEP[chunk[brackets[outside]]].astype(np.int64)
        if steps.size:
            levels = depth + np.cumsum(steps)
            deepest = max(deepest, int(levels.max()))
            depth = int(levels[-1])
        in_string ^= bool(delimiters.size % 2)
        tail = int(last_other[-1])
        backslashes = backslashes + chunk.size if tail < 0 else chunk.size - 1 - tail
    return deepest


def load_json(
    text: str | bytes,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    max_int_digits: int = MAX_INT_DIGITS,
    allow_nonfinite: bool = False,
) -> Any:
    """Parse strict JSON with limits, in time linear in its length. Raises ValueError (one line,
    nothing from the text) for invalid JSON, nesting deeper than ``max_depth``, an integer of more
    than ``max_int_digits`` digits, NaN/Infinity (unless ``allow_nonfinite``: Python's json writes
    them for float nan and inf), or a key repeated in one object."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 (byte {error.start})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep; at most {max_depth} are allowed")

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > max_int_digits:
            raise ValueError(f"an integer of {len(digits)} digits; at most {max_int_digits} are allowed")
        return int(digits)

    def parse_constant(name: str) -> Any:
        if allow_nonfinite:
            return float(name)
        raise ValueError(f"{name} is not JSON")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[str] = set()  # a set, not a scan of the keys before each: linear time
            repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
            raise ValueError(f"key '{printable(repeated, 80)}' appears twice in one object")
        return result

    try:
        return json.loads(
            text, parse_int=parse_int, parse_constant=parse_constant, object_pairs_hook=unique_keys
        )
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except RecursionError:  # cannot happen below max_depth; kept so a lower stack limit stays safe
        raise ValueError("nested too deeply") from None


# -- files -------------------------------------------------------------------------------------------
FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@contextlib.contextmanager
def open_regular(
    path: str | os.PathLike, *, max_bytes: int, error: type[UsageError] = UsageError
) -> Iterator[tuple[int, int]]:
    """(file descriptor, size) of a regular file of at most ``max_bytes``; ``error`` (naming the
    file) for anything else. Opening is non-blocking, so a FIFO is refused instead of waited on,
    and the type is checked on the opened descriptor, so what was checked is what is read."""
    where = printable(os.fspath(path))
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError) as failure:  # ValueError: an embedded NUL
        reason = failure.strerror if isinstance(failure, OSError) and failure.strerror else failure
        raise error(f"{where}: cannot read: {printable(reason)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise error(f"{where}: cannot read: {kind}, not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{where}: cannot read: {info.st_size} bytes, more than the {max_bytes} allowed")
        os.set_blocking(fd, True)
        yield fd, info.st_size
    finally:
        os.close(fd)


_PROC_FD = "/proc/self/fd"


def descriptor_path(fd: int, fallback: str | os.PathLike) -> str:
    """A path that opens the very file behind ``fd`` (``/proc/self/fd/N``), for a reader that
    takes a path: what it reads is what open_regular checked, even if the name is swapped in
    between. ``fallback`` where /proc is missing."""
    return f"{_PROC_FD}/{fd}" if os.path.isdir(_PROC_FD) else os.fspath(fallback)


def read_exactly(fd: int, offset: int, size: int, where: str, error: type[UsageError] = UsageError) -> bytes:
    """``size`` bytes at ``offset``; ``error`` if the file changed under us and has fewer."""
    chunks, done = [], 0
    while done < size:
        try:
            chunk = os.pread(fd, min(size - done, 1 << 24), offset + done)
        except OSError as failure:
            if failure.errno == errno.EINTR:
                continue
            raise error(f"{where}: cannot read: {printable(failure.strerror or failure)}") from None
        if not chunk:
            raise error(f"{where}: the file shrank while it was read")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def read_json_file(
    path: str | os.PathLike,
    *,
    max_bytes: int,
    error: type[UsageError] = UsageError,
    what: str = "",
    **limits: Any,
) -> Any:
    """The JSON document in the regular file ``path`` (no FIFO, no device, at most ``max_bytes``),
    through ``load_json`` with ``limits``. Anything wrong is one ``error`` that names the file,
    after ``what`` (e.g. "--from") when given."""
    where = printable(os.fspath(path))
    prefix = f"{what} " if what else ""
    try:
        with open_regular(path, max_bytes=max_bytes, error=error) as (fd, size):
            raw = read_exactly(fd, 0, size, where, error)
    except error as failure:
        raise error(f"{prefix}{failure}") from None
    try:
        return load_json(raw, **limits)
    except ValueError as failure:
        raise error(f"{prefix}{where}: {failure}") from None
