"""Trace format and I/O: the one vocabulary every part of tracesim reads and writes."""

from tracesim.format.digest import token_digest
from tracesim.format.errors import TraceFormatError, TruncatedTraceWarning
from tracesim.format.header import make_header
from tracesim.format.reader import FORMAT_MAJOR, FORMAT_MINOR, TraceReader
from tracesim.format import records
from tracesim.format.records import *  # noqa: F401,F403 - the vocabulary is the public API
from tracesim.format.trace import Trace, read_trace, write_trace
from tracesim.format.writer import TraceWriter

__all__ = records.__all__ + [
    "FORMAT_MAJOR", "FORMAT_MINOR", "Trace", "TraceFormatError", "TraceReader",
    "TraceWriter", "TruncatedTraceWarning", "make_header", "read_trace", "token_digest", "write_trace",
]
