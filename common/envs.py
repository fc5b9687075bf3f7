"""Where each backend's virtual environment lives and how to make sure it exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venvs"


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure_venv(name: str, *, quiet: bool = False) -> Path:
    """Create .venvs/<name> through make (the one place that knows how); raise UsageError with
    the log's location if that fails."""
    result = subprocess.run(
        ["make", "-s", f"venv-{name}"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.PIPE,
    )
    if result.returncode != 0 or not venv_python(name).exists():
        last = (result.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise UsageError(
            f"cannot create .venvs/{name} (`make venv-{name}` failed: {last[0]}); log: .venvs/{name}.log"
        )
    if result.stderr and not quiet:
        sys.stderr.write(result.stderr)
    return venv_python(name)
