"""`python -m common`: the paramparity command line."""

import sys

from common.commands.cli import main

sys.exit(main())
