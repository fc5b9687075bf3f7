"""Files written whole or not at all: write a temporary file in the target's folder, then rename
it over the target (``os.replace``, atomic on one file system). A write that fails midway (a full
disk, a killed process) leaves the previous file as it was and no temporary behind; a reader
sees the old file or the new one, never half of one. Standard library only: ``common.envs``
runs before any environment exists.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_atomically"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp gives 0600


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A fresh temporary path beside ``path`` (ending in ``suffix``, for writers that choose a
    format by the name) to write in full; on a clean exit it is flushed to disk and renamed
    over ``path``, on any exception removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{suffix}")
    os.close(handle)
    try:
        yield temporary
        with open(temporary, "rb") as written:  # the writer may have closed without syncing
            os.fsync(written.fileno())
        os.chmod(temporary, _MODE)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_atomically(path: str | os.PathLike, data: str | bytes) -> Path:
    """``data`` (text as UTF-8) in ``path``, whole or not at all."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
    return Path(path)
