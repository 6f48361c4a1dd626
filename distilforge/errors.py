"""One error family for every stage, and the one way the CLI reports it.

Each known failure raises a subclass of `DistilforgeError`; the `distilforge` command catches
it at the top and prints one line on stderr (`error: <message>`) with the class's exit code.
No traceback, and never a local variable: tracebacks are where API keys used to leak.

Exit codes (documented in the README):
  0  success
  1  runtime failure: the teacher is unreachable, training crashed, the disk refused a write
  2  user error: bad spec or input, missing data, a refusal by a gate (contamination, tamper,
     another writer holds the run)
  130 interrupted (Ctrl-C)
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130


class DistilforgeError(Exception):
    """Base of every error distilforge raises on purpose; the message is the line a user sees."""

    exit_code = EXIT_RUNTIME


class UserError(DistilforgeError):
    """The input is wrong (spec, file, run dir, option): fixing it is the user's move."""

    exit_code = EXIT_USER


class DataError(UserError, ValueError):
    """The rows handed to a stage do not fit it (a column missing, a label outside the task)."""


class RuntimeFailure(DistilforgeError):
    """Something outside the input failed (a server, the disk, a library)."""

    exit_code = EXIT_RUNTIME


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, prefixed by its type when the message is empty."""
    msg = str(exc).strip()
    first = msg.splitlines()[0] if msg else ""
    return first or type(exc).__name__
