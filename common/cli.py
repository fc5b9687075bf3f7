"""paramparity's command line; make runs it from the base environment.

User errors print one line and exit 2; everything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from common.config import BACKENDS, add_backends_option, parse_backend_list
from common.errors import USAGE_EXIT_CODE, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paramparity", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    test = commands.add_parser(
        "test",
        help="run the conformance suite for PARITY_BACKEND",
        description="Extra arguments go to pytest.",
    )
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)

    test_all = commands.add_parser("test-all", help="base tests and every backend, then a summary")
    add_backends_option(test_all)
    test_all.add_argument("pytest_args", nargs=argparse.REMAINDER)

    from common import diff, inspect_cmd, roundtrip, train_report  # subcommands register themselves

    diff.add_parser(commands)
    train_report.add_parser(commands)
    roundtrip.add_parser(commands)
    inspect_cmd.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "test":
            from common.testing import test_one

            return test_one(args.pytest_args)
        if args.command == "test-all":
            from common.testing import test_all

            return test_all(parse_backend_list(args.backends), args.pytest_args)
        return args.run(args)
    except UsageError as error:
        print(f"paramparity: error: {error}", file=sys.stderr)
        return USAGE_EXIT_CODE
    except KeyboardInterrupt:
        print("paramparity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["BACKENDS", "main"]
