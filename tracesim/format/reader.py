"""Streaming trace reader: every complete record, bounded memory, one clear error for bad bytes."""

from __future__ import annotations

import os
import warnings

import msgpack

from tracesim.format import codec
from tracesim.format.errors import FieldError, TraceFormatError, TruncatedTraceWarning, short_repr
from tracesim.format.records import Header

FORMAT_MAJOR = 1
FORMAT_MINOR = 3

# read_all decodes this many frames (or bytes) per msgspec call: small chunks stay in the CPU cache (one
# call over 64k frames decodes ~1.7x slower than 16 calls over 4k), and the copy of each stays small.
_CHUNK_FRAMES = 1 << 12
_CHUNK_BYTES = 1 << 20
_SCAN_STRIDE = 256

_ID_PLANS = codec.id_plans()

_UNPACK_ERRORS = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                  msgpack.BufferFull)


def _unpacker(fileobj, max_buffer_size: int = codec.MAX_FRAME_BYTES) -> msgpack.Unpacker:
    # The max_* bounds refuse hostile length prefixes before allocating; the C unpacker's fixed stack refuses
    # deep nesting (StackError). Arrays decode as tuples, which is what records are built from.
    return msgpack.Unpacker(
        fileobj, use_list=False, raw=False, strict_map_key=True, max_buffer_size=max_buffer_size,
        max_str_len=codec.MAX_STR_BYTES, max_bin_len=codec.MAX_STR_BYTES, max_array_len=codec.MAX_ARRAY_LEN,
        max_map_len=codec.MAX_MAP_LEN, max_ext_len=codec.MAX_STR_BYTES, read_size=1 << 18,
    )


def _kind_grouper():
    """The compiled columnizer's ``KindGrouper`` (which also keeps one str per distinct request id), or None
    where it is not in use (the trace then groups and finds its start on first use)."""
    from tracesim.format.trace import compiled_columnizer  # imported late: trace imports this module

    fast = compiled_columnizer()
    return None if fast is None else fast.KindGrouper(_ID_PLANS)


class TraceReader:
    """Iterate the records of one trace file.

    ``header`` is read on construction. Iterating yields event records (``with_proc=True``: ``(proc, record)``
    pairs). Raises ``TraceFormatError`` (file, byte offset, field) on corrupted, hostile or unsupported input.
    A trace that ends inside a record yields every complete record, then warns ``TruncatedTraceWarning`` with
    the number of bytes dropped; ``truncated_bytes`` holds it afterwards. Frames of unknown kinds (from a
    newer minor version) are skipped and counted in ``skipped``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            self._file = open(path, "rb")
            self.size_bytes = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise TraceFormatError(self.path, f"cannot open: {exc.strerror or exc}") from None
        self._unpacker = _unpacker(self._file)
        self.truncated_bytes = 0
        self.skipped = 0
        self.by_type: dict | None = None  # read_all: records grouped by type (compiled build only)
        self.start_ns: int | None = None  # read_all: the earliest t_ns (compiled build only)
        self._grouper = None
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()  # the caller never gets the reader to close
            raise

    def _read_header(self) -> Header:
        frame = self._next_frame()
        if frame is None:
            what = "empty file" if self.size_bytes == 0 else "file ends inside the header"
            raise TraceFormatError(self.path, f"not a tracesim trace: {what}", offset=0)
        if type(frame) is not tuple or len(frame) != 2 or frame[0] != Header.KIND:
            raise TraceFormatError(self.path, "not a tracesim trace: the first record is not a header", offset=0)
        fields = frame[1]
        if type(fields) is tuple and len(fields) >= 2 and fields[0] != FORMAT_MAJOR and type(fields[0]) is int:
            hint = "upgrade tracesim to read it" if fields[0] > FORMAT_MAJOR else "it predates this tracesim"
            raise TraceFormatError(
                self.path, f"format version {fields[0]}.{short_repr(fields[1], 24)} is not supported: this "
                f"tracesim reads format {FORMAT_MAJOR}.x ({hint})", field="header.format_major")
        try:
            return codec.build_header(fields)
        except FieldError as exc:
            raise TraceFormatError(self.path, str(exc), offset=0, field=exc.field) from None

    def _next_frame(self):
        """Next decoded msgpack object, or None at the end of the file (recording any truncated tail)."""
        start = self._unpacker.tell()
        try:
            return self._unpacker.unpack()
        except msgpack.OutOfData:
            self.truncated_bytes = self.size_bytes - start
            return None
        except _UNPACK_ERRORS as exc:
            raise TraceFormatError(self.path, f"corrupted record: {exc}", offset=start) from None

    def frames(self):
        """Yield ``(offset, raw_frame)`` for every event frame; raw frames are undecoded tuples."""
        unpacker, n_done = self._unpacker, 0
        while True:
            start = unpacker.tell()
            try:
                frame = unpacker.unpack()
            except msgpack.OutOfData:
                self._finish(start, n_done)
                return
            except _UNPACK_ERRORS as exc:
                raise TraceFormatError(self.path, f"corrupted record: {exc}", offset=start) from None
            n_done += 1
            yield start, frame

    def raw_frames(self) -> list:
        """Like ``frames()`` as one list and without offsets, for bulk reads. Same errors and warnings."""
        unpacker, frames = self._unpacker, []
        unpack, tell, append = unpacker.unpack, unpacker.tell, frames.append
        start = tell()
        try:
            while True:
                start = tell()  # after a partial record tell() has moved on: keep where it began
                append(unpack())
        except msgpack.OutOfData:
            pass
        except _UNPACK_ERRORS as exc:
            raise TraceFormatError(self.path, f"corrupted record: {exc}", offset=start) from None
        self._finish(start, len(frames))
        return frames

    def read_all(self, progress=None) -> tuple:
        """Every event record, decoded in bulk: ``(records, procs, skipped)``. Same errors and warnings as
        iterating; ``progress(n)`` is called with the number of records decoded after each chunk.

        A bounded unpacker only finds where each frame ends (``skip``: no Python objects are built), which
        also refuses hostile length prefixes and finds a truncated tail; each chunk of complete frames is then
        decoded by msgspec in one call (``codec.FrameDecoder``). A chunk msgspec cannot take (a kind or field
        of a newer minor version, a bad field) goes through the reference decoder, frame by frame, which
        applies the evolution rules or raises the error with the frame's offset.

        Where the compiled columnizer is built, each chunk is also grouped by record type and its earliest
        t_ns taken while it is in the CPU cache: ``by_type`` and ``start_ns`` hold them afterwards (None
        where not), for ``read_trace`` to hand to the Trace (its ``_kinds`` and its index's start).
        """
        unpacker, decoder = self._unpacker, codec.FrameDecoder()
        self._grouper = _kind_grouper()
        skip, tell = unpacker.skip, unpacker.tell
        out: tuple = ([], [], [0])  # records, procs, skipped (boxed)
        chunk_start = tell()
        count = 0  # complete frames found in the current chunk
        try:
            while True:
                # tell() only every _SCAN_STRIDE frames: the scan is then ~1/8 of the read.
                for _ in range(_SCAN_STRIDE):
                    skip()
                    count += 1
                end = tell()
                if count >= _CHUNK_FRAMES or end - chunk_start >= _CHUNK_BYTES:
                    self._decode_chunk(decoder, chunk_start, end, count, out, progress)
                    chunk_start, count = end, 0
        except msgpack.OutOfData:
            error = None
        except _UNPACK_ERRORS as exc:
            error = exc
        # The frame that ended the scan starts after the chunk's `count` complete frames.
        start = self._offset_after(chunk_start, count)
        if error is not None:
            raise TraceFormatError(self.path, f"corrupted record: {error}", offset=start) from None
        if count:
            self._decode_chunk(decoder, chunk_start, start, count, out, progress)
        self._finish(start, len(out[0]) + out[2][0])
        if self._grouper is not None:
            self.by_type, self.start_ns = self._grouper.by_type, self._grouper.start_ns
        return out[0], out[1], out[2][0]

    def _offset_after(self, begin: int, count: int) -> int:
        """Byte offset just after the ``count`` complete frames that start at ``begin`` (scanned again)."""
        unpacker = _unpacker(self._file)
        self._file.seek(begin)
        for _ in range(count):
            unpacker.skip()
        return begin + unpacker.tell()

    def _decode_chunk(self, decoder, begin: int, end: int, count: int, out: tuple, progress) -> None:
        records, procs, skipped = out
        body = os.pread(self._file.fileno(), end - begin, begin)
        decoded = decoder.decode(body, count)
        n_proc = len(self.header.processes)
        if decoded is not None and max(decoded[1]) < max(n_proc, 1):
            chunk_records = decoded[0]
            procs += decoded[1]
        else:  # the reference decoder, frame by frame: evolution rules, or the error at its offset
            chunk_records = []
            chunk = _unpacker(None, max(len(body), 1 << 18))  # not below the read size
            chunk.feed(body)
            for _ in range(count):
                offset = begin + chunk.tell()
                try:  # the scan only found where the frame ends: a bad string in it shows here
                    frame = chunk.unpack()
                except _UNPACK_ERRORS as exc:
                    raise TraceFormatError(self.path, f"corrupted record: {exc}", offset=offset) from None
                decoded = self._decode_one(frame, offset)
                if decoded is None:
                    skipped[0] += 1
                else:
                    procs.append(decoded[0])
                    chunk_records.append(decoded[1])
        if self._grouper is not None:  # before the chunk's records are referred to from anywhere else
            self._grouper.add(chunk_records)
        records += chunk_records
        if progress is not None:
            progress(len(records))

    def _decode_one(self, frame, offset: int):
        """``(proc, record)`` of one raw frame, None for a kind this version does not know; raise
        TraceFormatError naming the offset and field."""
        try:
            decoded = codec.decode_frame(frame)
        except FieldError as exc:
            raise TraceFormatError(self.path, str(exc), offset=offset, field=exc.field) from None
        if decoded is None:
            return None
        record, proc = decoded
        if proc >= len(self.header.processes) and proc:
            raise TraceFormatError(self.path, f"proc {proc} is not in the header's {len(self.header.processes)}"
                                   " processes", offset=offset, field=f"{record.KIND}.proc")
        return proc, record

    def feed(self, consumer) -> None:
        """Hand every event frame to ``consumer.feed_from(unpacker)`` (the compiled columnizer), which decodes
        and takes them in one loop and, when the unpacker raises, leaves ``start`` (offset of the frame it
        failed on) and ``count`` (frames taken). Same errors and warnings as ``raw_frames``."""
        try:
            consumer.feed_from(self._unpacker)
        except msgpack.OutOfData:
            pass
        except _UNPACK_ERRORS as exc:
            raise TraceFormatError(self.path, f"corrupted record: {exc}", offset=consumer.start) from None
        self._finish(consumer.start, consumer.count)

    def _finish(self, start: int, n_done: int) -> None:
        self.truncated_bytes = self.size_bytes - start
        if self.truncated_bytes:
            self._check_tail(start)
        self._file.close()
        if self.truncated_bytes:
            warnings.warn(TruncatedTraceWarning(
                f"{self.path}: trace ends inside a record at byte {start}: dropped {self.truncated_bytes} "
                f"bytes; read the header and {n_done} complete records"), stacklevel=3)

    def _check_tail(self, start: int) -> None:
        """A partial final record is a truncation only if it starts like a frame and declares sane lengths."""
        self._file.seek(start)
        tail = self._file.read(min(self.truncated_bytes, codec.MAX_FRAME_BYTES))
        if tail[0] not in (0x92, 0x93):  # every frame is a 2- or 3-element array
            raise TraceFormatError(self.path, f"corrupted record: byte 0x{tail[0]:02x} does not start a frame",
                                   offset=start)
        try:
            msgpack.unpackb(tail, max_str_len=codec.MAX_STR_BYTES, max_bin_len=codec.MAX_STR_BYTES,
                            max_array_len=codec.MAX_ARRAY_LEN, max_map_len=codec.MAX_MAP_LEN)
        except ValueError as exc:
            if "exceeds" in str(exc):
                raise TraceFormatError(self.path, f"corrupted record: {exc}", offset=start) from None
        except Exception:  # anything else about a partial record is what truncation looks like
            pass

    def __iter__(self):
        for _proc, record in self.iter_with_proc():
            yield record

    def iter_with_proc(self):
        for offset, frame in self.frames():
            decoded = self._decode_one(frame, offset)
            if decoded is None:
                self.skipped += 1
            else:
                yield decoded

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
