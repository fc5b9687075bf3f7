"""What `pip install .` installs as the package ``paramparity``: this launcher, with common/ and
backends/ as its subpackages ``paramparity.common`` and ``paramparity.backends``, so no generic
top-level name (``common``, ``backends``) lands in site-packages (pyproject.toml's package-dir).

The code imports itself as ``common...``; the console script puts this package's folder first on
``sys.path`` in its own process, and nowhere else. In a checkout, ``python -m common`` and make
run the same code without it.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    sys.dont_write_bytecode = True  # nothing written under site-packages, not even __pycache__
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from common.commands.cli import main as cli_main

    return cli_main()
