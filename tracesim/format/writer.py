"""Append-only, buffered trace writer.

The stream is a header frame followed by event frames (see ``codec.py``). Frames are packed as they arrive
and written in batches: when the buffer passes ``flush_bytes``, when ``flush_interval_s`` has passed since
the last write, on ``flush()`` and on ``close()`` (which also fsyncs). A process killed mid-run therefore
loses at most the records appended since the last write, and a reader recovers everything before that.

One thread may append while another flushes or closes: packing and buffer swaps happen under one lock.
``background_io=True`` (``write_trace``: whole traces at once) hands each batch of bytes to a thread that writes
it while the caller encodes the next (a write releases the GIL): on a 255 MB trace the file writes, mostly
the kernel taking page-cache memory, then cost the encoding thread nothing. Errors surface at the next call
or at ``close()``, which still fsyncs before it returns.
The bytes depend only on the records appended (no clocks, no object ids), so the same events give the same
file.

Frames are encoded by msgspec (~1.7x faster than msgpack-python's packer on records, same bytes; tests compare
the two). A batch is encoded as one list, in one call, and the list's array header is cut off: what is left is
exactly the frames back to back.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import msgpack
import msgspec

from tracesim.format.records import Header

DEFAULT_FLUSH_BYTES = 1 << 20
DEFAULT_FLUSH_INTERVAL_S = 1.0
_BATCH = 1 << 14  # records per encoder call in extend(): bounds the frame list and the buffer between writes
_CHECK_EVERY = 64  # appends between two flush-threshold checks: keeps the clock read off the hot path
_IO_QUEUE = 8  # background_io: batches encoded ahead of the writes (bounds the memory held, ~8 MiB)


class _BackgroundWrites:
    """A thread that writes the byte batches put to it to ``file``, in order; the first error is kept for the
    owner to raise (``check``), and later batches are dropped (the thread never dies early: a put never hangs)."""

    def __init__(self, file):
        self._file, self.error = file, None
        self._todo: queue.Queue = queue.Queue(_IO_QUEUE)
        self._thread = threading.Thread(target=self._run, name="tracesim-trace-writes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._todo.get()) is not None:
            if self.error is None:
                try:
                    self._file.write(data)
                except Exception as exc:  # noqa: BLE001 - handed to the owner as it is
                    self.error = exc

    def put(self, data: bytes) -> None:
        self.check()
        self._todo.put(data)

    def drain(self) -> None:
        """Wait for every batch put so far to be written; raise the first error."""
        self._todo.put(None)
        self._thread.join()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def _base_value(obj):
    """msgspec's hook for values it does not encode: subclasses of int, float and str (numpy.float64, an
    IntEnum) are packed as their base type, as msgpack-python packs them."""
    for base in (bool, int, float, str):
        if isinstance(obj, base):
            return base(obj)
    raise TypeError(f"cannot write a value of type {type(obj).__name__} into a trace")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_base_value)


def _array_header_len(first_byte: int) -> int:
    """Length of the msgpack array header that starts with ``first_byte`` (fixarray, array16, array32)."""
    return 1 if first_byte & 0xF0 == 0x90 else 3 if first_byte == 0xDC else 5


class TraceWriter:
    """Write ``header`` then every appended record to ``path`` (created or truncated).

    Raises ``OSError`` when the file cannot be opened or written; callers that must never fail (the recorder)
    catch it. Use as a context manager or call ``close()``.
    """

    def __init__(self, path: str | os.PathLike, header: Header, *, flush_bytes: int = DEFAULT_FLUSH_BYTES,
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S, background_io: bool = False):
        self.path = Path(path)
        self.header = header
        self._flush_bytes = flush_bytes
        self._flush_interval_s = flush_interval_s
        self._buf = bytearray()  # frames packed and not yet written
        self._encode_into = _ENCODER.encode_into
        self._lock = threading.Lock()
        self._last_write_s = time.monotonic()
        self.records_appended = 0
        self._next_check = _CHECK_EVERY  # records_appended at which the flush thresholds are looked at
        self._file = open(self.path, "wb")
        self._io = None
        self._buf += msgpack.packb((Header.KIND, header), use_bin_type=True)
        self.flush()  # a header on disk at once: even an early crash leaves a readable trace
        if background_io:
            self._io = _BackgroundWrites(self._file)

    def append(self, record, proc: int = 0) -> None:
        """Append one event record; ``proc`` indexes ``header.processes``."""
        # Hot path: the frame is built inline (same layout as codec.encode_frame) and encoded at the end of
        # the buffer (offset -1).
        with self._lock:
            self._encode_into((record.KIND, record) if not proc else (record.KIND, record, proc), self._buf, -1)
            self.records_appended += 1
            if self.records_appended >= self._next_check:
                self._maybe_flush_locked()

    def extend(self, records, procs=None) -> None:
        """Append many records (``procs``: parallel sequence of process indices, default all 0).

        The batched path: one lock acquisition, one encoder call and one threshold check per batch of up to
        ``_BATCH`` records. The recorder's writer thread drains its queue through here.
        """
        if not isinstance(records, (list, tuple)):
            records = list(records)
        for i in range(0, len(records), _BATCH):
            frames = self.frames_of(records[i:i + _BATCH], None if procs is None else procs[i:i + _BATCH])
            with self._lock:
                buf = self._buf
                start = len(buf)
                self._encode_into(frames, buf, start)
                del buf[start:start + _array_header_len(buf[start])]  # the frames, back to back
                self.records_appended += len(frames)
                self._maybe_flush_locked()

    @staticmethod
    def frames_of(batch, procs) -> list:
        """The frames of ``batch``: ``(kind, record)``, or ``(kind, record, proc)`` for a non-zero ``procs``
        entry (None: all 0). ``write_trace`` puts the compiled ``_fastcols.frames_of`` in its place."""
        if procs is None:
            return [(record.KIND, record) for record in batch]
        return [(r.KIND, r, proc) if proc else (r.KIND, r) for r, proc in zip(batch, procs)]

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def close(self) -> None:
        """Write what is buffered, fsync and close. Safe to call twice."""
        with self._lock:
            if self._file.closed:
                return
            try:
                try:
                    self._write_locked()
                finally:
                    if self._io is not None:  # the thread ends here, whatever happened
                        io, self._io = self._io, None
                        io.drain()
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()

    def _maybe_flush_locked(self) -> None:
        self._next_check = self.records_appended + _CHECK_EVERY
        if (len(self._buf) >= self._flush_bytes
                or time.monotonic() - self._last_write_s >= self._flush_interval_s):
            self._write_locked()

    def _write_locked(self) -> None:
        self._last_write_s = time.monotonic()
        if self._buf:
            if self._io is not None:
                self._io.put(bytes(self._buf))
            else:
                self._file.write(self._buf)
                self._file.flush()
            self._buf.clear()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
