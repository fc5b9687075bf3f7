"""Finding the processes a test started: each carries PARITY_MARK=<mark> in its environment, which
every descendant inherits, so a test finds its whole tree, even a process that left its session."""

from __future__ import annotations

import os
import time

AFTER_S = 5.0  # issue 23: no child alive 5 s after the parent stopped


def marked(mark: str) -> list[int]:
    """The live (not zombie) processes whose environment holds PARITY_MARK=<mark>."""
    needle = f"PARITY_MARK={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as environ:
                    if needle in environ.read().split(b"\0"):
                        with open(f"/proc/{name}/stat", "rb") as stat:
                            if stat.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                                found.append(int(name))
            except OSError:
                continue
    return found


def gone(mark: str, within: float = AFTER_S) -> list[int]:
    """Wait up to ``within`` seconds for every marked process to end; those still alive."""
    deadline = time.monotonic() + within
    while (alive := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive
