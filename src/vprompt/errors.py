"""Errors of the user's making (a bad setting, a missing file): reported as one line, not a traceback; and a stop
requested with SIGTERM, taken as an interruption (Ctrl-C)."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class CLIError(Exception):
    """A user error to print as one line (exit status 2)."""


class DataFileError(OSError):
    """A data file that cannot be read, named in the message with what would fix it."""


#: ValueError is here because settings are checked with it; a bug that raises one is shown in full by
#: setting the environment variable VPROMPT_DEBUG=1.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, PermissionError, DataFileError, CLIError,
)  # fmt: skip


def user_message(error: BaseException) -> str:
    """The one line to show for a user error: its message, or for one raised in a data-loading process (which
    PyTorch re-raises with that process's traceback in the message) the original message."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]  # "vprompt.errors.DataFileError: <the message>"
    kind, sep, message = last.partition(": ")
    return message if sep and kind.rsplit(".", 1)[-1] == type(error).__name__ else last


def one_line(error: BaseException) -> bool:
    """Whether ``error`` is reported as one line: a user error, unless VPROMPT_DEBUG asks for every traceback."""
    return isinstance(error, USER_ERRORS) and not os.environ.get("VPROMPT_DEBUG")


def print_user_error(error: BaseException, prog: str) -> None:
    """Print the user error ``error`` as ``<prog>: error: <its one line>`` on stderr (the caller then exits with
    status 2), or re-raise it where it is shown in full (:func:`one_line`)."""
    if not one_line(error):
        raise error
    print(f"{prog}: error: {user_message(error)}", file=sys.stderr)


def did_you_mean(value: object, known: Iterable[str], prefix: str = "", cutoff: float = 0.6) -> str:
    """``"; did you mean a, b?"`` with up to three of ``known`` close to ``value`` (each after ``prefix``), or ""."""
    by_key: dict[str, str] = {}
    for name in known:  # compared in lower case: CIFAR10 is close to cifar10
        by_key.setdefault(name.lower(), name)
    close = difflib.get_close_matches(str(value).lower(), list(by_key), n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(prefix + by_key[c] for c in close)}?" if close else ""


def state_dict_mismatch(
    error: BaseException, shown: int = 3, otherwise: Callable[[BaseException], str] | None = None
) -> str:
    """PyTorch's ``load_state_dict`` error (a line per kind, every key named) told in one short line: how many
    keys are missing, unexpected or of another shape, with the first ``shown`` of each. Another error is told by
    ``otherwise``, else by its first line."""
    lines = [line.strip() for line in str(error).splitlines()]
    if not lines or not lines[0].startswith("Error(s) in loading state_dict"):
        if otherwise is not None:
            return otherwise(error)
        return lines[0] if lines else type(error).__name__
    parts, shapes = [], []
    for line in lines[1:]:
        kind, _, rest = line.partition(" key(s) in state_dict: ")
        if rest:
            keys = re.findall(r'"([^"]*)"', rest)
            more = ", ..." if len(keys) > shown else ""
            parts.append(f"{len(keys)} {kind.lower()} ({', '.join(keys[:shown])}{more})")
        elif line.startswith("size mismatch for "):
            shapes.append(line.removeprefix("size mismatch for ").rstrip("."))
    if shapes:
        more = "; ..." if len(shapes) > 1 else ""
        parts.append(f"{len(shapes)} of another shape ({shapes[0]}{more})")
    return "; ".join(parts) or lines[0]


#: The exit status of a process interrupted by Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it).
INTERRUPTED_EXIT = 130


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While in this block, SIGTERM (a scheduler's stop, ``suite --jobs`` stopping its runs) unwinds as Ctrl-C
    does: what is half-written is removed and what is written is kept. Only the main thread gets signals."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
