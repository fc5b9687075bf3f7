"""paramparity's command line; make runs it from the base environment.

User errors print one line and exit 2; everything else keeps its traceback. Every setting is
checked before a command starts anything. The children a command starts die with it; Ctrl-C
(SIGINT) stops them all and exits 130, SIGTERM 143, with no report written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from common import children
from common.config import (
    add_backends_option,
    add_timeout_option,
    canonical_backend,
    check_settings,
    parse_backend_list,
    selected_backend,
)
from common.errors import USAGE_EXIT_CODE, UsageError, one_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paramparity", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "test",
        help="run the conformance suite for a backend: paramparity test [BACKEND] [pytest args]",
        usage="paramparity test [BACKEND] [pytest arguments]",
        description="Run tests/conformance in the backend's environment, creating it if needed. The "
        "backend is the first argument (paramparity test torch) or PARITY_BACKEND. Any other argument "
        "goes to pytest (e.g. -k ties).",
    )

    test_all = commands.add_parser(
        "test-all",
        help="base tests and every backend, then a summary",
        description="Run common/'s tests in .venvs/base, then every backend's conformance suite in its own "
        "env; keep going on failure; print a summary; exit 1 if any suite failed or could not run. "
        "Any other argument goes to pytest.",
    )
    add_backends_option(test_all)
    add_timeout_option(test_all)
    test_all.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where pytest's caches and the record of suite times go (default: .pytest_cache/)",
    )

    from common.commands import (
        bench,
        checkpoints,
        diff,
        facts,
        fuzz,
        inspect,
        matrix,
        roundtrip,
        train,
    )  # subcommands register themselves

    diff.add_parser(commands)
    matrix.add_parser(commands)
    bench.add_parser(commands)
    train.add_parser(commands)
    roundtrip.add_parser(commands)
    inspect.add_parsers(commands)
    checkpoints.add_parsers(commands)
    fuzz.add_parser(commands)
    facts.add_parser(commands)
    return parser


def _version() -> str:
    """The installed distribution's version, or, run from a checkout, its pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("paramparity")
    except metadata.PackageNotFoundError:
        import tomllib

        from common.declarations import PACKAGE_ROOT

        return tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text())["project"]["version"]


def _need_checkout(command: str) -> None:
    """A command that runs frameworks needs the environments, which make builds in a checkout;
    an installed copy run elsewhere says so, instead of pointing at a Makefile that is not there."""
    from common.declarations import ROOT, in_checkout

    if not in_checkout():
        raise UsageError(
            f"`paramparity {command}` runs the frameworks in a paramparity checkout's environments, and "
            f"{ROOT} is not in one: run it inside the checkout, or set PARITY_ROOT=/path/to/checkout "
            "(`paramparity diff --from FILE`, spec, inspect, export and facts need no checkout)"
        )


def backends_to_run(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The backends whose children the command starts; None for a command that starts none."""
    if args.command == "test":
        return (args.test_backend or selected_backend(),)
    if args.command in ("spec", "inspect", "export", "facts") or getattr(args, "from_files", None):
        return None
    if args.command == "matrix" and (args.workflow or args.list):
        return None
    if args.command == "fuzz" and not args.examples:
        return ()
    return parse_backend_list(args.backends)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    with children.handling_signals():  # held through the clean-up: a second Ctrl-C prints nothing
        try:
            return run(parser, argv)
        except UsageError as error:
            print(one_line(f"paramparity: error: {error}"), file=sys.stderr)
            return USAGE_EXIT_CODE
        except KeyboardInterrupt as stop:
            signum = getattr(stop, "signum", signal.SIGINT)
            children.interrupt(signum)  # no new child; every child asked to stop
            children.wait_all()
            stopped = f"interrupted by {signal.Signals(signum).name}: every child stopped, no report written"
            print(f"paramparity: {stopped}", file=sys.stderr)
            return 128 + signum


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args, unknown = parser.parse_known_args(argv)
    if args.command == "test":  # `paramparity test torch -k ties`: a first word that is no option or path
        named = bool(unknown) and not unknown[0].startswith("-") and not os.path.exists(unknown[0])
        args.test_backend = canonical_backend(unknown.pop(0)) if named else None
    if unknown and args.command not in ("test", "test-all"):
        # The command's own usage, not the top-level one: it says what that command takes.
        subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subcommands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    backends = backends_to_run(args)
    if backends is not None:
        _need_checkout(args.command)
        check_settings(backends)
    if args.command == "test":
        from common.commands.testing import test_one

        return test_one(unknown, backends[0])  # pytest's own flags pass through
    if args.command == "test-all":
        from common.commands.testing import test_all

        return test_all(backends, unknown, args.timeout, args.cache_dir)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main"]
