"""An in-memory trace: a header and its records, in stream order, with the process that wrote each."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tracesim.format.index import index_trace
from tracesim.format.reader import TraceReader
from tracesim.format.records import Header
from tracesim.format.writer import TraceWriter
from tracesim.gcpause import cyclic_gc_paused


@dataclass
class Trace:
    header: Header
    records: list  # event records, in stream order
    procs: list = field(default_factory=list)  # process index of each record; empty means all 0
    path: str | None = None  # the file it was read from, if any
    truncated_bytes: int = 0  # bytes of a partial final record dropped when reading
    skipped: int = 0  # records of kinds unknown to this version, skipped when reading
    _by_type: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _by_type_key: tuple = field(default=(), init=False, repr=False, compare=False)
    _index: object = field(default=None, init=False, repr=False, compare=False)
    _index_key: tuple = field(default=(), init=False, repr=False, compare=False)
    # (id, length of ``records``, earliest t_ns or None) found while reading (read_trace), for the index
    _start_hint: tuple = field(default=(), init=False, repr=False, compare=False)

    def index(self, start_ns: int | None = None):
        """The trace's ``TraceIndex`` (steps paired per process, faults, trace start: format/index.py), built
        in one pass on first use and kept, so check and plots of one trace share it; rebuilt if ``records``
        or ``procs`` was replaced or grew. A first caller that found the start itself may hand it over
        (``start_ns``)."""
        key = (id(self.records), len(self.records), id(self.procs), len(self.procs))
        if self._index_key != key:
            if start_ns is None:
                start_ns = self.read_start()  # None: not known, found by the index
            self._index = index_trace(self, start_ns)
            self._index_key = key
        return self._index

    def read_start(self) -> int | None:
        """The earliest t_ns, where ``read_trace`` found it while decoding and ``records`` is still the list it
        read (same object, same length); else None."""
        hint = self._start_hint
        return hint[2] if hint[:2] == (id(self.records), len(self.records)) else None

    def of(self, *types) -> list:
        """Records of the given record types, in stream order (a new list each call)."""
        if len(types) != 1:
            return [r for r in self.records if isinstance(r, types)]
        return list(self._kinds().get(types[0], ()))

    def _kinds(self) -> dict:
        """Records grouped by exact type, built in one pass on first use and rebuilt if ``records`` was
        replaced or grew (readers call ``of`` several times on traces of millions of records)."""
        key = (id(self.records), len(self.records))
        if self._by_type_key != key:
            self._by_type, self._by_type_key = group_by_type(self.records), key
        return self._by_type

    def with_procs(self):
        """Yield ``(proc, record)`` pairs."""
        if not self.procs:
            return ((0, r) for r in self.records)
        return zip(self.procs, self.records)

    def counts(self) -> dict:
        """Number of records per kind, in the order kinds first appear (that of ``_kinds``' groups)."""
        counts: dict = {}
        for kind, bucket in self._kinds().items():
            counts[kind.KIND] = counts.get(kind.KIND, 0) + len(bucket)  # two classes may share a KIND
        return counts


def group_by_type(records) -> dict:
    """``{type: [records of exactly that type, in stream order]}``; compiled (``_fastcols.group_by_type``)
    where the columnizer is built: the Python loop below costs ~0.2 us a record, over a second on a replay."""
    fast = compiled_columnizer()  # brings numpy: a trace worth grouping is read by a tool
    if fast is not None and type(records) is list:
        return fast.group_by_type(records)
    by_type: dict = {}
    for r in records:
        bucket = by_type.get(type(r))
        if bucket is None:
            by_type[type(r)] = bucket = []
        bucket.append(r)
    return by_type


def read_trace(path: str | os.PathLike, progress=None) -> Trace:
    """Read a whole trace; raises TraceFormatError, warns TruncatedTraceWarning (see TraceReader).
    ``progress(n)``: called with the number of records read so far, every chunk of frames.

    Bulk path (``TraceReader.read_all``): frames are decoded by msgspec in chunks, straight into records,
    with the cyclic GC paused (millions of fresh tuples would trigger collections that free nothing).
    """
    with cyclic_gc_paused(), TraceReader(path) as reader:
        records, procs, skipped = reader.read_all(progress)
    trace = Trace(reader.header, records, procs if any(procs) else [], str(path), reader.truncated_bytes, skipped)
    if reader.by_type is not None:  # grouped and its start found while decoding: no pass over the records later
        trace._by_type, trace._by_type_key = reader.by_type, (id(records), len(records))
        trace._start_hint = (id(records), len(records), reader.start_ns)
    return trace


@cyclic_gc_paused()  # the frames of each batch are acyclic temporaries (see tracesim/gcpause.py)
def write_trace(path: str | os.PathLike, trace: Trace) -> None:
    with TraceWriter(path, trace.header, background_io=True) as writer:
        fast = compiled_columnizer()
        if fast is not None:
            writer.frames_of = fast.frames_of  # the frames built in C
        writer.extend(trace.records, trace.procs or None)


def compiled_columnizer():
    """``tracesim.format._fastcols`` (the columnizer and the C passes over whole traces that readers, the index,
    fidelity and the step costs use) where it is built and current and ``TRACESIM_PURE_PYTHON`` is not set,
    else None: the callers' Python is the reference. Imported on first use: it brings numpy."""
    try:
        from tracesim.format.columns import _fastcols, compiled_available
    except ImportError:  # numpy missing
        return None
    return _fastcols if compiled_available() else None
