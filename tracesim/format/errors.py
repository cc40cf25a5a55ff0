"""Errors and warnings raised while reading or writing traces."""

from __future__ import annotations

import reprlib

MAX_ECHO = 80  # characters of a value from a trace that an error message may echo

_echo = reprlib.Repr()
_echo.maxlevel, _echo.maxstring, _echo.maxlong, _echo.maxother = 2, MAX_ECHO, MAX_ECHO, MAX_ECHO
_echo.maxtuple = _echo.maxlist = _echo.maxdict = _echo.maxset = _echo.maxfrozenset = 6


def short_repr(value, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (ending in "..." when cut), built without ever
    formatting the whole of a huge string or container: what error messages echo from hostile input."""
    text = _echo.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TraceFormatError(Exception):
    """A trace cannot be read. The message names the file, and the byte offset or field when known."""

    def __init__(self, path: str, message: str, offset: int | None = None, field: str | None = None):
        self.path, self.offset, self.field = str(path), offset, field
        where = self.path
        if offset is not None:
            where += f": byte {offset}"
        if field is not None:
            where += f": field {field}"
        super().__init__(f"{where}: {message}")


class TruncatedTraceWarning(UserWarning):
    """The trace ended inside a record; every complete record before it was read."""


class FieldError(ValueError):
    """A record's field has the wrong shape or type; ``field`` is a dotted path such as ``sched.reqs[3].req_id``."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)
