"""Errors and warnings raised while reading or writing traces."""

from __future__ import annotations


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
