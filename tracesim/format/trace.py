"""An in-memory trace: a header and its records, in stream order, with the process that wrote each."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tracesim.format import codec
from tracesim.format.errors import FieldError, TraceFormatError
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

    def of(self, *types) -> list:
        """Records of the given record types, in stream order."""
        return [r for r in self.records if isinstance(r, types)]

    def with_procs(self):
        """Yield ``(proc, record)`` pairs."""
        if not self.procs:
            return ((0, r) for r in self.records)
        return zip(self.procs, self.records)

    def counts(self) -> dict:
        """Number of records per kind, in the order kinds first appear."""
        counts: dict = {}
        for r in self.records:
            counts[r.KIND] = counts.get(r.KIND, 0) + 1
        return counts


def read_trace(path: str | os.PathLike) -> Trace:
    """Read a whole trace; raises TraceFormatError, warns TruncatedTraceWarning (see TraceReader).

    Bulk path: the file is unpacked in one C loop with the cyclic GC paused (millions of fresh tuples would
    trigger collections that free nothing); byte offsets are only worked out again if a record is bad.
    """
    with cyclic_gc_paused(), TraceReader(path) as reader:
        frames = reader.raw_frames()
        records, procs, skipped = _decode_all(reader, frames)
    return Trace(reader.header, records, procs if any(procs) else [], str(path), reader.truncated_bytes, skipped)


def _decode_all(reader: TraceReader, frames: list) -> tuple:
    decode, n_proc = codec.decode_frame, len(reader.header.processes)
    records, procs, skipped = [], [], 0
    for i, frame in enumerate(frames):
        try:
            decoded = decode(frame)
        except FieldError as exc:
            raise TraceFormatError(reader.path, str(exc), offset=_offset_of(reader.path, i), field=exc.field) from None
        if decoded is None:
            skipped += 1
            continue
        record, proc = decoded
        if proc and proc >= n_proc:
            raise TraceFormatError(reader.path, f"proc {proc} is not in the header's {n_proc} processes",
                                   offset=_offset_of(reader.path, i), field=f"{record.KIND}.proc")
        records.append(record)
        procs.append(proc)
    return records, procs, skipped


def _offset_of(path: str, frame_index: int) -> int | None:
    """Byte offset of the frame_index-th event frame (error path only: reads the file again)."""
    with TraceReader(path) as reader:
        for i, (offset, _frame) in enumerate(reader.frames()):
            if i == frame_index:
                return offset
    return None


def write_trace(path: str | os.PathLike, trace: Trace) -> None:
    with TraceWriter(path, trace.header) as writer:
        writer.extend(trace.records, trace.procs or None)
