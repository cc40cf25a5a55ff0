"""The bulk paths (issue 15) give what the reference paths give: read_trace (msgspec, chunks of frames) the
same records, errors and warnings as decoding frame by frame in Python; TraceWriter (msgspec's encoder, whole
batches) the same bytes as msgpack-python packing each frame."""

from __future__ import annotations

import enum
import warnings

import msgpack
import numpy as np
import pytest

from tracesim.format import TraceFormatError, TraceReader, TraceWriter, TruncatedTraceWarning, read_trace, write_trace
from tracesim.format import reader as reader_module
from tracesim.format.engine_settings import RENAMED
from tracesim.format.records import OutReq, ProcessInfo, RewardBound, StepScheduled, StepUpdated
from tracesim.format.synthetic import synthetic_trace

from conftest import TRACES
from helpers import header

BUNDLED = sorted(TRACES.glob("*.msgpack"))


def _reference(path) -> tuple:
    """(records, procs, skipped, truncated_bytes) decoded one frame at a time by the reference decoder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedTraceWarning)
        reader = TraceReader(path)
        pairs = list(reader.iter_with_proc())
    return [r for _p, r in pairs], [p for p, _r in pairs], reader.skipped, reader.truncated_bytes


def _bulk(path) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedTraceWarning)
        trace = read_trace(path)
    return trace.records, trace.procs or [0] * len(trace.records), trace.skipped, trace.truncated_bytes


def _packed(header_record, records, procs=None) -> bytes:
    """The stream as msgpack-python packs it, frame by frame: the reference bytes."""
    packer = msgpack.Packer(use_bin_type=True)
    out = [packer.pack(("header", header_record))]
    for i, r in enumerate(records):
        proc = procs[i] if procs else 0
        out.append(packer.pack((r.KIND, r, proc) if proc else (r.KIND, r)))
    return b"".join(out)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few frames, so that small traces span many chunks and chunk edges are exercised."""
    monkeypatch.setattr(reader_module, "_CHUNK_FRAMES", 7)
    monkeypatch.setattr(reader_module, "_SCAN_STRIDE", 3)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_recordings_read_the_same_records_by_both_paths_and_write_back_byte_for_byte(path, tmp_path):
    bulk = _bulk(path)
    assert bulk == _reference(path)
    # Written back, every frame has the bytes msgpack-python gives it, and every event frame is the
    # original's; the header's engine settings are written under their current names (engine_settings.py).
    out = tmp_path / "copy.msgpack"
    write_trace(out, read_trace(path))
    trace = read_trace(path)
    assert out.read_bytes() == _packed(trace.header, trace.records, trace.procs)
    (old_header, old_events), (new_header, new_events) = _split(path.read_bytes()), _split(out.read_bytes())
    assert new_events == old_events
    old_settings, new_settings = msgpack.unpackb(old_header)[1][5], msgpack.unpackb(new_header)[1][5]
    assert new_settings == {RENAMED.get(k, k): v for k, v in old_settings.items()}
    assert (new_header == old_header) == (not RENAMED.keys() & old_settings.keys())


def _split(data: bytes) -> tuple:
    """(header frame, event frames) of a stream's bytes."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    unpacker.skip()
    return data[:unpacker.tell()], data[unpacker.tell():]


def test_chunk_edges_procs_and_newer_minor_frames_mid_chunk(small_chunks, tmp_path):
    trace = synthetic_trace(waves=2, seed=4)
    n = len(trace.records)
    procs = [i % 3 for i in range(n)]
    h = trace.header._replace(processes=(ProcessInfo("client", "h", 1), ProcessInfo("engine-core", "h", 2),
                                         ProcessInfo("sim", "h", 3)))
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, h) as w:
        w.extend(trace.records, procs)
    assert _bulk(path) == _reference(path)
    assert _bulk(path)[0] == trace.records
    # A frame of a newer minor version (an appended field; an unknown kind) in the middle of the stream: its
    # chunk goes through the reference decoder, the others stay on the bulk path; same result either way.
    data = path.read_bytes()
    unpacker = msgpack.Unpacker(use_list=False, raw=False)
    unpacker.feed(data)
    frames = list(unpacker)
    newer = list(frames)
    kind, fields = newer[40][:2]
    newer[40] = (kind, tuple(fields) + ("a field from the future",)) + tuple(newer[40][2:])
    newer.insert(90, ("future_kind", (1, 2, 3)))
    path.write_bytes(b"".join(msgpack.packb(f, use_bin_type=True) for f in newer))
    records, got_procs, skipped, _ = _bulk(path)
    assert (records, got_procs, skipped) == _reference(path)[:3]
    assert records == trace.records and skipped == 1


def test_ints_in_float_fields_read_as_floats_and_bools_are_not_ints_on_both_paths(small_chunks, tmp_path):
    path = tmp_path / "t.msgpack"
    frames = [("header", tuple(header()))] + [("reward", (i, f"r{i}", None, None, 1)) for i in range(20)]
    frames.append(("upd", (5, 6, 1, (("r1", 1, None, False, None, (0, -1.5)),))))
    path.write_bytes(b"".join(msgpack.packb(f, use_bin_type=True) for f in frames))
    records = _bulk(path)[0]
    assert records == _reference(path)[0]
    assert all(type(r.reward) is float for r in records[:20])
    assert records[-1].outs[0].logprobs == (0.0, -1.5) and type(records[-1].outs[0].logprobs[0]) is float
    frames.insert(15, ("reward", (True, "x", None, None, 0.5)))
    path.write_bytes(b"".join(msgpack.packb(f, use_bin_type=True) for f in frames))
    offsets = [o for o, _f in TraceReader(path).frames()]
    with pytest.raises(TraceFormatError, match=r"reward\.t_ns: expected int, got bool") as info:
        read_trace(path)
    assert info.value.offset == offsets[14]


@pytest.mark.parametrize("bad_at", [0, 6, 7, 8, 30])
def test_an_error_in_any_chunk_names_the_frame_offset_the_reference_names(small_chunks, tmp_path, bad_at):
    trace = synthetic_trace(waves=1, seed=2)
    records = list(trace.records)
    sched = next(i for i, r in enumerate(records) if isinstance(r, StepScheduled) and i >= bad_at)
    bad = records[sched]
    records[sched] = bad._replace(reqs=(bad.reqs[0]._replace(prefill_tokens="12"),) + bad.reqs[1:])
    path = tmp_path / "bad.msgpack"
    path.write_bytes(_packed(trace.header, records))
    with pytest.raises(TraceFormatError) as reference:
        list(TraceReader(path))
    with pytest.raises(TraceFormatError) as bulk:
        read_trace(path)
    assert str(bulk.value) == str(reference.value)
    assert "sched.reqs[0].prefill_tokens" in str(bulk.value) and bulk.value.offset is not None


@pytest.mark.parametrize("cut", [1, 9, 40])
def test_truncation_and_corruption_after_many_chunks(small_chunks, tmp_path, cut):
    trace = synthetic_trace(waves=2, seed=1)
    data = _packed(trace.header, trace.records)
    path = tmp_path / "cut.msgpack"
    path.write_bytes(data[:-cut])
    with pytest.warns(TruncatedTraceWarning):
        bulk = read_trace(path)
    reference = _reference(path)
    assert (bulk.records, bulk.truncated_bytes) == (reference[0], reference[3]) and bulk.truncated_bytes > 0
    # A byte that cannot start a frame, far into the stream: the offset is the frame's.
    path.write_bytes(data)
    offsets = [o for o, _f in TraceReader(path).frames()]
    broken = bytearray(data)
    broken[offsets[50]] = 0xC1  # never used by msgpack
    path.write_bytes(bytes(broken))
    with pytest.raises(TraceFormatError, match="corrupted record") as info:
        read_trace(path)
    assert info.value.offset == offsets[50]


class _Level(enum.IntEnum):
    HIGH = 2


def test_writer_bytes_equal_msgpack_python_packing_for_subclassed_scalars(tmp_path):
    # numpy floats and IntEnums reach records from user code: msgpack-python packs them as their base type.
    records = [RewardBound(1, "a", reward=np.float64(0.25), worker=_Level.HIGH),
               StepUpdated(2, 3, 0, (OutReq("a", 1, token_ids=(5, 6), logprobs=(np.float64(-0.5), -1.0)),))]
    h = header()
    path = tmp_path / "w.msgpack"
    with TraceWriter(path, h) as w:
        w.append(records[0])
        w.extend(records[1:], [0])
        w.extend([], [])
    assert path.read_bytes() == _packed(h, records)
    with TraceWriter(tmp_path / "x.msgpack", h) as w, pytest.raises(TypeError, match="cannot write a value"):
        w.append(RewardBound(1, "a", reward=object()))


def test_progress_is_reported_per_chunk_up_to_every_record(small_chunks, tmp_path):
    trace = synthetic_trace(waves=1, seed=3)
    path = tmp_path / "t.msgpack"
    write_trace(path, trace)
    seen: list = []
    assert read_trace(path, progress=seen.append).records == trace.records
    assert len(seen) > 10 and seen == sorted(seen) and seen[-1] == len(trace.records)
