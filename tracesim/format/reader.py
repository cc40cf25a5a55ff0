"""Streaming trace reader: every complete record, bounded memory, one clear error for bad bytes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import msgpack

from tracesim.format import codec
from tracesim.format.errors import FieldError, TraceFormatError, TruncatedTraceWarning, short_repr
from tracesim.format.records import Header

FORMAT_MAJOR = 1
FORMAT_MINOR = 0

_UNPACK_ERRORS = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
                  msgpack.BufferFull)


def _unpacker(fileobj) -> msgpack.Unpacker:
    # The max_* bounds refuse hostile length prefixes before allocating; the C unpacker's fixed stack refuses
    # deep nesting (StackError). Arrays decode as tuples, which is what records are built from.
    return msgpack.Unpacker(
        fileobj, use_list=False, raw=False, strict_map_key=True, max_buffer_size=codec.MAX_FRAME_BYTES,
        max_str_len=codec.MAX_STR_BYTES, max_bin_len=codec.MAX_STR_BYTES, max_array_len=codec.MAX_ARRAY_LEN,
        max_map_len=codec.MAX_MAP_LEN, max_ext_len=codec.MAX_STR_BYTES, read_size=1 << 18,
    )


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
        decode = codec.decode_frame
        for offset, frame in self.frames():
            try:
                decoded = decode(frame)
            except FieldError as exc:
                raise TraceFormatError(self.path, str(exc), offset=offset, field=exc.field) from None
            if decoded is None:
                self.skipped += 1
                continue
            record, proc = decoded
            if proc >= len(self.header.processes) and proc:
                raise TraceFormatError(self.path, f"proc {proc} is not in the header's {len(self.header.processes)}"
                                       " processes", offset=offset, field=f"{record.KIND}.proc")
            yield proc, record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
