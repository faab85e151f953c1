"""Errors of the user's making (a bad setting, a missing file): reported as one line, not a traceback."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


class CLIError(Exception):
    """A user error to print as one line (exit status 2)."""


#: ValueError is here because settings are checked with it; a bug that raises one is shown in full by
#: setting the environment variable VPROMPT_DEBUG=1.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, CLIError)


def one_line(error: BaseException) -> bool:
    """Whether ``error`` is reported as one line: a user error, unless VPROMPT_DEBUG asks for every traceback."""
    return isinstance(error, USER_ERRORS) and not os.environ.get("VPROMPT_DEBUG")


def did_you_mean(value: object, known: Iterable[str], prefix: str = "", cutoff: float = 0.6) -> str:
    """``"; did you mean a, b?"`` with up to three of ``known`` close to ``value`` (each after ``prefix``), or ""."""
    close = difflib.get_close_matches(str(value), list(known), n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
