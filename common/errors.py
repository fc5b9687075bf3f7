"""Errors that mean "the user's input was bad". Command-line entry points turn them into one line
on stderr and exit code 2; everything else is a bug and keeps its traceback."""

from __future__ import annotations

USAGE_EXIT_CODE = 2


class ParityError(Exception):
    """Base class for every error paramparity raises on purpose."""


class UsageError(ParityError):
    """Bad input from the user: an env var, a command-line flag, a missing environment."""


class SpecError(UsageError):
    """An invalid model spec. Raised before any framework call, identically for every backend."""


class ParamFileError(UsageError):
    """A parameter file or value set that cannot be loaded. The model is left untouched."""


class BackendUnavailable(UsageError):
    """The selected backend's framework cannot be imported in this environment."""
