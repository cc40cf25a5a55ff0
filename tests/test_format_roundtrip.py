"""Every record kind survives write -> read unchanged, and the same records always give the same bytes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracesim.format import TraceReader, TraceWriter, read_trace, write_trace
from tracesim.format.synthetic import synthetic_trace

from tracesim.format.codec import SPECS

from strategies import EVENT_RECORDS, HEADERS, records_of
from helpers import header


@settings(max_examples=300, deadline=None)
@given(records=st.lists(EVENT_RECORDS, max_size=20), hdr=HEADERS)
def test_any_records_round_trip_through_a_file(tmp_path_factory, records, hdr):
    path = tmp_path_factory.mktemp("rt") / "t.msgpack"
    with TraceWriter(path, hdr) as w:
        for r in records:
            w.append(r)
    back = read_trace(path)
    assert back.header == hdr
    assert back.records == records


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_each_record_kind_round_trips(tmp_path_factory, kind):
    @settings(max_examples=40, deadline=None)
    @given(records=st.lists(records_of(SPECS[kind]), min_size=1, max_size=5))
    def round_trip(records):
        path = tmp_path_factory.mktemp(kind) / "t.msgpack"
        with TraceWriter(path, header()) as w:
            w.extend(records)
        assert read_trace(path).records == records

    round_trip()


def test_process_index_is_kept(tmp_path):
    trace = synthetic_trace(waves=1, groups_per_wave=1, group_size=2)
    path = tmp_path / "t.msgpack"
    hdr = header()
    hdr = hdr._replace(processes=hdr.processes * 2)
    with TraceWriter(path, hdr) as w:
        for i, r in enumerate(trace.records):
            w.append(r, proc=i % 2)
    with TraceReader(path) as reader:
        procs = [p for p, _ in reader.iter_with_proc()]
    assert procs[:4] == [0, 1, 0, 1]


def test_same_records_give_identical_bytes(tmp_path):
    trace = synthetic_trace(seed=3)
    a, b = tmp_path / "a.msgpack", tmp_path / "b.msgpack"
    write_trace(a, trace)
    with TraceWriter(b, trace.header, flush_bytes=64) as w:  # different flush pattern, same bytes
        for r in trace.records:
            w.append(r)
    assert a.read_bytes() == b.read_bytes()
    assert synthetic_trace(seed=3).records == trace.records


def test_unknown_trailing_fields_and_kinds_from_a_newer_minor_version_are_ignored(tmp_path):
    path = tmp_path / "newer.msgpack"
    hdr = header()._replace(format_minor=7)
    with open(path, "wb") as f:
        f.write(msgpack.packb(("header", tuple(hdr) + ("future header field",))))
        f.write(msgpack.packb(("resume", (5, "client", "future field", 42))))
        f.write(msgpack.packb(("some_future_kind", (6, "x"))))
        f.write(msgpack.packb(("resume", (7,))))  # missing trailing fields take their defaults
    trace = read_trace(path)
    assert trace.header.format_minor == 7
    assert [(r.KIND, r.t_ns, r.side) for r in trace.records] == [("resume", 5, "client"), ("resume", 7, "engine")]
    assert trace.skipped == 1


def test_a_concurrent_flusher_does_not_lose_or_reorder_records(tmp_path):
    import threading

    trace = synthetic_trace(waves=2)
    path = tmp_path / "t.msgpack"
    w = TraceWriter(path, trace.header, flush_bytes=1 << 30, flush_interval_s=1e9)
    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            w.flush()

    t = threading.Thread(target=flusher)
    t.start()
    for r in trace.records:
        w.append(r)
    stop.set()
    t.join()
    w.close()
    assert read_trace(path).records == trace.records


def test_background_writes_give_the_same_bytes_and_raise_a_failed_write(tmp_path):
    # write_trace writes from a thread (background_io): same bytes as writing on the caller's thread, and a
    # write that fails there is raised to the caller, at close at the latest, never lost or hung on.
    trace = synthetic_trace(seed=5)
    a, b = tmp_path / "a.msgpack", tmp_path / "b.msgpack"
    write_trace(a, trace)
    with TraceWriter(b, trace.header, flush_bytes=256) as w:
        w.extend(trace.records, trace.procs or None)
    assert a.read_bytes() == b.read_bytes()

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

    for close_only in (False, True):
        w = TraceWriter(tmp_path / "c.msgpack", trace.header, flush_bytes=256, background_io=True)
        w._io._file = Full()
        thread = w._io._thread
        with pytest.raises(OSError, match="No space left"):
            with w:
                # more batches than the queue holds: a put must not block for ever; or one batch, at close
                for record in trace.records[:1] if close_only else trace.records * 20:
                    w.append(record)
        assert w._file.closed and not thread.is_alive()
