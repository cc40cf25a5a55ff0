"""Append-only, buffered trace writer.

The stream is a header frame followed by event frames (see ``codec.py``). Frames are packed as they arrive
and written in batches: when the buffer passes ``flush_bytes``, when ``flush_interval_s`` has passed since
the last write, on ``flush()`` and on ``close()`` (which also fsyncs). A process killed mid-run therefore
loses at most the records appended since the last write, and a reader recovers everything before that.

One thread may append while another flushes or closes: packing and buffer swaps happen under one lock.
The bytes depend only on the records appended (no clocks, no object ids), so the same events give the same
file.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import msgpack

from tracesim.format.codec import encode_frame
from tracesim.format.records import Header

DEFAULT_FLUSH_BYTES = 1 << 20
DEFAULT_FLUSH_INTERVAL_S = 1.0
_CHECK_EVERY = 64  # appends between two flush-threshold checks: keeps the clock read off the hot path


class TraceWriter:
    """Write ``header`` then every appended record to ``path`` (created or truncated).

    Raises ``OSError`` when the file cannot be opened or written; callers that must never fail (the recorder)
    catch it. Use as a context manager or call ``close()``.
    """

    def __init__(self, path: str | os.PathLike, header: Header, *, flush_bytes: int = DEFAULT_FLUSH_BYTES,
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S):
        self.path = Path(path)
        self.header = header
        self._flush_bytes = flush_bytes
        self._flush_interval_s = flush_interval_s
        self._packer = msgpack.Packer(autoreset=False, use_bin_type=True)
        self._pack = self._packer.pack
        self._lock = threading.Lock()
        self._last_write_s = time.monotonic()
        self.records_appended = 0
        self._next_check = _CHECK_EVERY  # records_appended at which the flush thresholds are looked at
        self._file = open(self.path, "wb")
        self._packer.pack((Header.KIND, header))
        self.flush()  # a header on disk at once: even an early crash leaves a readable trace

    def append(self, record, proc: int = 0) -> None:
        """Append one event record; ``proc`` indexes ``header.processes``."""
        # Hot path: the frame is built inline (same layout as codec.encode_frame) and the packer's bound
        # method is cached, so appending costs little more than packing the record by hand.
        with self._lock:
            self._pack((record.KIND, record) if not proc else (record.KIND, record, proc))
            self.records_appended += 1
            if self.records_appended >= self._next_check:
                self._maybe_flush_locked()

    def extend(self, records, procs=None) -> None:
        """Append many records (``procs``: parallel sequence of process indices, default all 0).

        The batched path: one lock acquisition and one threshold check per call. The recorder's writer thread
        drains its queue through here.
        """
        if not isinstance(records, (list, tuple)):
            records = list(records)
        with self._lock:
            pack = self._pack
            if procs is None:
                for record in records:
                    pack((record.KIND, record))
            else:
                for record, proc in zip(records, procs):
                    pack(encode_frame(record, proc))
            self.records_appended += len(records)
            self._maybe_flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def close(self) -> None:
        """Write what is buffered, fsync and close. Safe to call twice."""
        with self._lock:
            if self._file.closed:
                return
            try:
                self._write_locked()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()

    def _maybe_flush_locked(self) -> None:
        self._next_check = self.records_appended + _CHECK_EVERY
        if (self._packer.getbuffer().nbytes >= self._flush_bytes
                or time.monotonic() - self._last_write_s >= self._flush_interval_s):
            self._write_locked()

    def _write_locked(self) -> None:
        data = self._packer.bytes()
        self._packer.reset()
        self._last_write_s = time.monotonic()
        if data:
            self._file.write(data)
            self._file.flush()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
