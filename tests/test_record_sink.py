"""The recorder's sink and id mapping: no vLLM needed."""

import warnings

import pytest

from tracesim.format import RecorderLost, RequestAdded, read_trace
from tracesim.format.records import Header, ProcessInfo
from tracesim.record.convert import canonical_id
from tracesim.record.sink import RecordSink


def _header():
    return Header(1, 0, "test", "vllm", (ProcessInfo("engine-core", "h", 1),))


def test_sink_writes_every_put_record_in_order(tmp_path):
    path = tmp_path / "t.msgpack"
    sink = RecordSink(path, _header(), flush_interval_s=0.05)
    for i in range(500):
        sink.put(RequestAdded(i, f"r{i}"))
    sink.close()
    trace = read_trace(path)
    assert [r.req_id for r in trace.records] == [f"r{i}" for i in range(500)]
    assert sink.dropped == 0


def _process_sink(path, header, **kw):
    from tracesim.record.sidecar import ProcessSink

    return ProcessSink(path, header, prepare=lambda item: item, convert=lambda item: (item,), **kw)


@pytest.mark.parametrize("make_sink", [RecordSink, _process_sink], ids=["thread", "converter-process"])
def test_unwritable_path_warns_once_and_counts_drops_without_raising(tmp_path, make_sink):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink = make_sink(blocker / "sub" / "t.msgpack", _header(), flush_interval_s=0.01)
        for i in range(10):
            sink.put(RequestAdded(i, f"r{i}"))
        sink.close()
    messages = [str(w.message) for w in caught if "tracesim recorder" in str(w.message)]
    assert len(messages) == 1 and "cannot open trace file" in messages[0]
    assert sink.dropped == 10


def test_conversion_failure_is_counted_and_reported_as_recorder_lost(tmp_path):
    path = tmp_path / "t.msgpack"

    def convert(item):
        if item == "bad":
            raise ValueError("boom")
        return (RequestAdded(1, item),)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink = RecordSink(path, _header(), convert=convert, flush_interval_s=10)
        for item in ("a", "bad", "b"):
            sink.put(item)
        sink.close()
    records = read_trace(path).records
    lost = [r for r in records if isinstance(r, RecorderLost)]
    assert [r.req_id for r in records if isinstance(r, RequestAdded)] == ["a", "b"]
    assert len(lost) == 1 and lost[0].count == 1


def test_canonical_id_strips_only_vllms_random_suffix():
    assert canonical_id("g3-1a2b3c4d") == "g3"
    assert canonical_id("0_g3-1a2b3c4d") == "0_g3"
    assert canonical_id("my-request") == "my-request"
    assert canonical_id("req-ABCDEFGH") == "req-ABCDEFGH"


def test_a_lagging_writer_bounds_the_queue_and_reports_what_it_dropped(tmp_path):
    path = tmp_path / "t.msgpack"
    sink = RecordSink(path, _header(), flush_interval_s=10, max_pending=5)
    sink.stop_thread()  # a writer that does not keep up: nothing is taken off the queue
    for i in range(12):
        sink.put(RequestAdded(i, f"r{i}"))
    assert sink.dropped == 7
    sink.close()
    records = read_trace(path).records
    assert [r.req_id for r in records if isinstance(r, RequestAdded)] == [f"r{i}" for i in range(5)]
    assert [r.count for r in records if isinstance(r, RecorderLost)] == [7]
