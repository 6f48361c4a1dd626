"""API keys: held in a `Secret` whose repr is masked, and scrubbed from everything we print.

A key reaches distilforge through an environment variable named in the spec (`api_key_env`,
`ARGILLA_API_KEY`). The moment it is read it is wrapped in a `Secret`, which registers the
value; `install_redaction()` (called by the CLI) then replaces every registered value with
`****` on stdout, stderr and every logging handler, so a library that formats an exception
with the key in it (or a traceback that shows a local) still prints nothing secret.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import threading

MASK = "****"
_ACTIVE: set[str] = set()
_LOCK = threading.Lock()
MIN_LEN = 6  # shorter "keys" ("none", "embedded") are placeholders, and masking them would mangle text


class Secret:
    """A string that never shows itself: `repr`/`str` print a mask, `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value or ""
        register(self._value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __repr__(self) -> str:
        return f"Secret('{MASK}')" if self._value else "Secret('')"

    __str__ = __repr__

    def __reduce__(self):  # pickled into worker processes: keep the value, re-register there
        return (Secret, (self._value,))


def register(value: str | None) -> None:
    """Remember a secret value (and its stripped form: a key pasted with a trailing newline shows
    up escaped, `sk-…\\n`, in the error httpx raises for the bad header)."""
    if not value:
        return
    with _LOCK:
        for v in {value, value.strip()}:
            if len(v) >= MIN_LEN:
                _ACTIVE.add(v)


def has_secrets() -> bool:
    return bool(_ACTIVE)


def reveal(value) -> str:
    """The plain value of a Secret (or a str passed through)."""
    return value.reveal() if isinstance(value, Secret) else (value or "")


def from_env(var: str) -> Secret:
    return Secret(os.environ.get(var, ""))


def redact(text: str) -> str:
    if not _ACTIVE or not text:
        return text
    for v in sorted(_ACTIVE, key=len, reverse=True):
        if v in text:
            text = text.replace(v, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Formats the record once, scrubs it, and stores the result (args cleared)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ACTIVE:
            try:
                msg = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken format string is logging's problem, not ours
                return True
            clean = redact(msg)
            if clean != msg:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                import traceback

                record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
                record.exc_info = None
        return True


class RedactingStream(io.TextIOBase):
    """Wraps stdout/stderr: every write is scrubbed of the registered values.

    A value split across two writes would slip through, so writes are scrubbed whole and the
    keys we handle are written by libraries in one piece (a repr, a header dump)."""

    def __init__(self, inner):
        self._inner = inner

    def write(self, s: str) -> int:
        self._inner.write(redact(s))
        return len(s)

    def flush(self) -> None:
        self._inner.flush()

    def fileno(self) -> int:
        return self._inner.fileno()

    def isatty(self) -> bool:
        return self._inner.isatty()

    @property
    def encoding(self):  # noqa: D401
        return getattr(self._inner, "encoding", "utf-8")

    def __getattr__(self, name):
        return getattr(self._inner, name)


_FILTER = RedactingFilter()


def scrub_logging() -> None:
    """Put the filter on the root logger and on every handler that exists now."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
        for h in lg.handlers:
            if _FILTER not in h.filters:
                h.addFilter(_FILTER)


def install_redaction() -> None:
    """Scrub stdout, stderr and logging for the rest of this process (and forked children)."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
    scrub_logging()
