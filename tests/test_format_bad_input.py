"""Truncated, corrupted, hostile and unsupported traces: every complete record, or one clear error."""

from __future__ import annotations

import struct
import warnings

import msgpack
import pytest

from tracesim.format import TraceFormatError, TruncatedTraceWarning, read_trace, write_trace
from tracesim.format.columns import read_columns
from tracesim.format.synthetic import synthetic_trace

from helpers import header


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    trace = synthetic_trace(waves=1, groups_per_wave=1, group_size=2, max_tokens=5)
    path = tmp_path_factory.mktemp("small") / "t.msgpack"
    write_trace(path, trace)
    return trace, path.read_bytes()


def _frame_ends(data: bytes) -> list[int]:
    unpacker = msgpack.Unpacker()
    unpacker.feed(data)
    ends = []
    for _ in unpacker:
        ends.append(unpacker.tell())
    return ends


def test_truncation_at_every_byte_offset_recovers_every_complete_record(small, tmp_path):
    trace, data = small
    ends = _frame_ends(data)  # ends[0] is the header's end
    path = tmp_path / "cut.msgpack"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        if cut < ends[0]:
            with pytest.raises(TraceFormatError, match="byte 0"):
                read_trace(path)
            continue
        complete = sum(1 for e in ends[1:] if e <= cut)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            back = read_trace(path)
        assert back.records == trace.records[:complete]
        dropped = cut - ends[complete]
        assert back.truncated_bytes == dropped
        if dropped:
            assert len(caught) == 1 and issubclass(caught[0].category, TruncatedTraceWarning)
            assert f"dropped {dropped} bytes" in str(caught[0].message)
        else:
            assert not caught


def test_corrupted_byte_mid_stream_names_file_and_offset(small, tmp_path):
    trace, data = small
    ends = _frame_ends(data)
    bad = bytearray(data)
    bad[ends[3]] = 0xC1  # a msgpack byte that is never used
    path = tmp_path / "bad.msgpack"
    path.write_bytes(bytes(bad))
    with pytest.raises(TraceFormatError) as err:
        read_trace(path)
    assert str(path) in str(err.value) and f"byte {ends[3]}" in str(err.value)
    assert err.value.offset == ends[3]


def test_invalid_utf8_in_a_string_names_file_and_offset_in_both_readers(small, tmp_path):
    # The bulk reader's scan only finds where frames end; the bad string shows when the frame is decoded, and
    # must be the same one clear error as iterating gives (it was a UnicodeDecodeError traceback).
    from tracesim.format import TraceReader

    trace, data = small
    ends = _frame_ends(data)
    frame = data[ends[3]:ends[4]]
    at = frame.index(trace.records[3].req_id.encode())  # inside the frame's req_id string
    bad = bytearray(data)
    bad[ends[3] + at] = 0xC1  # not valid UTF-8 anywhere
    path = tmp_path / "bad-utf8.msgpack"
    path.write_bytes(bytes(bad))
    errors = []
    for read in (read_trace, lambda p: list(TraceReader(p))):
        with pytest.raises(TraceFormatError) as err:
            read(path)
        errors.append(str(err.value))
        assert err.value.offset == ends[3] and "utf-8" in str(err.value)
    assert errors[0] == errors[1]


def test_wrong_field_type_names_the_field_and_offset(tmp_path):
    path = tmp_path / "t.msgpack"
    good = msgpack.packb(("header", tuple(header())))
    bad_frame = msgpack.packb(("sched", (1, 2, "not an int")))
    path.write_bytes(good + bad_frame)
    with pytest.raises(TraceFormatError) as err:
        read_trace(path)
    assert err.value.field == "sched.step" and err.value.offset == len(good)
    with pytest.raises(TraceFormatError) as err:
        read_columns(path)
    assert err.value.field == "sched.step" and err.value.offset == len(good)


def test_nested_field_errors_give_the_path(tmp_path):
    path = tmp_path / "t.msgpack"
    good = msgpack.packb(("header", tuple(header())))
    path.write_bytes(good + msgpack.packb(("sched", (1, 2, 0, (("r0", 1, 0), ("r1", "x", 0))))))
    with pytest.raises(TraceFormatError, match=r"sched\.reqs\[1\]\.prefill_tokens"):
        read_trace(path)


@pytest.mark.parametrize("major", [2, 0])
def test_other_major_version_is_refused_with_a_clear_message(tmp_path, major):
    path = tmp_path / "t.msgpack"
    path.write_bytes(msgpack.packb(("header", (major, 0, "9.9", "vllm", ()))))
    with pytest.raises(TraceFormatError, match=f"format version {major}.0 is not supported"):
        read_trace(path)


@pytest.mark.parametrize("payload, what", [
    (b"\xdb\xff\xff\xff\xff", "str length beyond the file and the limit"),
    (b"\xdd\xff\xff\xff\xff", "array length beyond the limit"),
    (b"\xdf\xff\xff\xff\xff", "map length beyond the limit"),
    (b"\xc6\x7f\xff\xff\xff", "bin length beyond the limit"),
    (b"\x91" * 100_000, "deep nesting"),
    (b"\x92\xa5sched\xdd\xff\xff\xff\xff", "nested array length beyond the limit, at the end"),
])
def test_hostile_lengths_and_nesting_are_refused_quickly(tmp_path, payload, what):
    path = tmp_path / "hostile.msgpack"
    path.write_bytes(msgpack.packb(("header", tuple(header()))) + payload + b"\x00" * 64)
    with pytest.raises(TraceFormatError, match="byte"):
        read_trace(path)


def test_huge_declared_length_at_the_end_is_reported_as_truncation_not_allocated(tmp_path):
    path = tmp_path / "t.msgpack"
    hdr = msgpack.packb(("header", tuple(header())))
    # A frame whose request id declares 1 MiB (within limits) with 3 bytes present: a truncated tail.
    tail = b"\x92\xa3add\x92\x01\xdb" + struct.pack(">I", 1 << 20) + b"abc"
    path.write_bytes(hdr + tail)
    with pytest.warns(TruncatedTraceWarning, match=f"dropped {len(tail)} bytes"):
        trace = read_trace(path)
    assert trace.records == []


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (b"hello world", "not a tracesim trace"),
    (msgpack.packb({"a": 1}), "first record is not a header"),
])
def test_non_traces_are_refused(tmp_path, content, match):
    path = tmp_path / "x.msgpack"
    path.write_bytes(content)
    with pytest.raises(TraceFormatError, match=match):
        read_trace(path)


def test_second_header_and_bad_proc_are_refused(tmp_path):
    hdr = msgpack.packb(("header", tuple(header())))
    path = tmp_path / "t.msgpack"
    path.write_bytes(hdr + hdr)
    with pytest.raises(TraceFormatError, match="second header"):
        read_trace(path)
    path.write_bytes(hdr + msgpack.packb(("resume", (1,), 5)))
    with pytest.raises(TraceFormatError, match="proc 5"):
        read_trace(path)
    for reader in (read_trace, read_columns):
        path.write_bytes(hdr + msgpack.packb(("resume", (1,), 5)))
        with pytest.raises(TraceFormatError, match="proc 5") as err:
            reader(path)
        assert err.value.offset == len(hdr) and err.value.field == "resume.proc"
        path.write_bytes(hdr + msgpack.packb(("resume", (1,), "p")))
        with pytest.raises(TraceFormatError) as err:
            reader(path)
        assert err.value.offset == len(hdr) and err.value.field == "resume.proc"


def test_a_frame_kind_that_is_not_a_string_is_refused_by_both_readers(tmp_path):
    hdr = msgpack.packb(("header", tuple(header())))
    path = tmp_path / "t.msgpack"
    for kind in ({"k": 1}, 5):  # a map cannot even be looked up as a kind
        path.write_bytes(hdr + msgpack.packb((kind, (1,))))
        for reader in (read_trace, read_columns):
            with pytest.raises(TraceFormatError) as err:
                reader(path)
            assert err.value.offset == len(hdr) and err.value.field == "frame.kind"
