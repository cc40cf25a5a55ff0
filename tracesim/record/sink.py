"""A record sink that keeps trace writing off the caller's critical path and never raises.

``RecordSink.put`` appends an item to a deque (atomic under the GIL, no lock); a daemon thread pops what
is queued every ``flush_interval_s``, turns the items into records (``convert``) and writes
them with a ``TraceWriter``, flushing to the OS after every batch. A process that dies therefore loses at
most the last flush window.

Failure policy: opening or writing the file, and converting an item, may fail. The sink then warns once
(``warnings.warn`` + the ``tracesim.record`` logger), counts the records it dropped and, when the file is
writable again (or at close), writes one ``RecorderLost`` record with that count. Nothing propagates to
the thread that calls ``put``.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import warnings

from tracesim.format.records import RecorderLost
from tracesim.format.writer import TraceWriter

log = logging.getLogger("tracesim.record")

DEFAULT_FLUSH_INTERVAL_S = 0.5
_WRITE_CHUNK = 64  # records packed per GIL hold when writing a batch
# The writer thread hands the GIL back at least this often while converting a batch: otherwise the engine
# thread can wait up to the interpreter's switch interval (5 ms) for it. Yielding after every item instead
# costs a thread switch per item, which shows on the median step.
_HOLD_GIL_S = 0.0005
MAX_PENDING = 1 << 20  # items held while the writer lags; beyond this, new items are dropped and counted


def _identity(item):
    return (item,)


def _nothing() -> None:
    pass


class RecordSink:
    """Buffer items from a hot path and write them as trace records from a background thread.

    ``path``/``header``: the trace file to create. ``convert(item) -> iterable of records`` runs on the
    background thread (default: the item is already a record). ``max_pending``: items queued at most while
    the writer lags (memory bound); more are dropped and counted. ``on_lost()``: called whenever items are dropped.
    Never raises from ``put``/``close``.
    """

    def __init__(self, path, header, *, convert=_identity, flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
                 proc: int = 0, max_pending: int = MAX_PENDING, on_lost=None):
        self.path = str(path)
        # Called (no arguments, any thread) whenever items are dropped: a producer that sends differences
        # (reduce.StepReducer) then starts again from a full item.
        self._on_lost = on_lost or _nothing
        self.header = header
        self.proc = proc
        self.dropped = 0  # records (or items) lost so far
        self.written = 0
        self._lost_reported = 0
        self._convert = convert
        self._interval_s = flush_interval_s
        self._drain_interval_s = flush_interval_s  # how often the background thread takes the queue
        self._max_pending = max_pending
        self._pending: collections.deque = collections.deque()
        self._warned = False
        self._closed = False
        self._stopping = False
        self._wake = threading.Event()
        self._io_lock = threading.Lock()  # one drain at a time: the thread, or close()
        self._writer = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._open()
        except Exception as exc:  # unwritable path: keep serving, count what we drop
            self._warn(f"cannot open trace file {self.path}: {exc}")
        self._thread = threading.Thread(target=self._run, name="tracesim-recorder", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _open(self) -> None:
        """Create the trace file (raises OSError when it cannot be written)."""
        self._writer = TraceWriter(self.path, self.header, flush_interval_s=self._interval_s)

    # --- hot path -------------------------------------------------------------------------------------

    def put(self, item) -> None:
        """Queue one item; O(1), lock-free, never raises."""
        if len(self._pending) < self._max_pending:
            self._pending.append(item)
        else:
            self.dropped += 1
            self._on_lost()

    # --- background ----------------------------------------------------------------------------------

    def stop_thread(self) -> None:
        """Stop the background thread: from now on queued items are handled only by ``drain()`` (and
        ``close``). For callers that account for the recorder's work themselves (benchmarks)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._closed and not self._stopping:
            self._wake.wait(self._drain_interval_s)
            self._wake.clear()
            self.drain()

    def drain(self) -> None:
        """Handle everything queued so far. Called by the thread and by ``close``."""
        with self._io_lock:
            pending = self._pending
            if not pending:
                return
            popleft = pending.popleft
            self._process([popleft() for _ in range(len(pending))])  # deque pops are atomic: no put is lost

    def _process(self, batch: list) -> None:
        """Convert a batch of items to records and write them."""
        records = []
        yield_at_s = time.perf_counter() + _HOLD_GIL_S
        for item in batch:
            try:
                records.extend(self._convert(item))
            except Exception as exc:
                self.dropped += 1
                self._on_lost()
                self._warn(f"could not convert a recorded event ({type(exc).__name__}: {exc})")
            if time.perf_counter() >= yield_at_s:
                time.sleep(0)  # hand the GIL back (see _HOLD_GIL_S)
                yield_at_s = time.perf_counter() + _HOLD_GIL_S
        self._write(records)

    def _write(self, records: list) -> None:
        if self._writer is None:
            self.dropped += len(records)
            return
        try:
            if self.dropped > self._lost_reported:
                lost = self.dropped - self._lost_reported
                self._writer.append(RecorderLost(time.monotonic_ns(), lost, "dropped"), self.proc)
                self._lost_reported = self.dropped
            for i in range(0, len(records), _WRITE_CHUNK):  # chunks, handing the GIL back in between
                chunk = records[i:i + _WRITE_CHUNK]
                self._writer.extend(chunk, [self.proc] * len(chunk) if self.proc else None)
                time.sleep(0)
            self._writer.flush()
            self.written += len(records)
        except Exception as exc:
            self.dropped += len(records)
            self._on_lost()
            self._warn(f"cannot write trace file {self.path}: {exc}")

    def _finish(self) -> None:
        """Write the lost count if any and close the file (``close`` catches what this raises)."""
        if self._writer is not None:
            if self.dropped > self._lost_reported:
                self._write([])
            self._writer.close()

    def _warn(self, message: str) -> None:
        if self._warned:
            return
        self._warned = True
        try:
            text = f"tracesim recorder: {message}; generation continues, dropped records are counted"
            log.warning(text)
            warnings.warn(text, RuntimeWarning, stacklevel=2)
        except Exception:  # pragma: no cover - warnings machinery itself failing must not matter
            pass

    def close(self) -> None:
        """Write what is queued, the lost count if any, and close the file. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        try:
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5.0)
            self.drain()
            self._finish()
        except Exception as exc:
            self._warn(f"cannot close trace file {self.path}: {exc}")
        try:
            atexit.unregister(self.close)
        except Exception:  # pragma: no cover
            pass


def process_anchors() -> tuple[int, int]:
    """(monotonic ns, wall ns) read back to back: the clock anchor of a ProcessInfo."""
    return time.monotonic_ns(), time.time_ns()


def host_name() -> str:
    try:
        return os.uname().nodename
    except Exception:  # pragma: no cover
        return "unknown"
