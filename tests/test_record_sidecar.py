"""The recorder's converter process (``tracesim.record.sidecar``): records built off the engine's GIL."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import msgpack
import pytest

from tracesim.format import Paused, RecorderLost, RequestAdded, Resumed, read_trace
from tracesim.format.records import Header, ProcessInfo
from tracesim.record.convert import Converter
from tracesim.record.items import (
    PlainAbort, PlainAdd, PlainLost, PlainPause, PlainReset, PlainSched, PlainUpd, from_wire,
)
from tracesim.record.sidecar import ProcessSink


def _header():
    return Header(1, 0, "test", "vllm", (ProcessInfo("engine-core", "h", 1),))


def _sink(path, **kw):
    converter = Converter()
    return ProcessSink(path, _header(), prepare=lambda item: item,
                       convert=lambda item: converter.convert(item), flush_interval_s=0.05, **kw)


def _plain_add(i):
    return PlainAdd(PlainAdd.KIND, i, f"r{i}-0123abcd", [3, 4, 5], 8, None, [])


def test_converter_process_writes_every_item_in_order(tmp_path):
    path = tmp_path / "t.msgpack"
    sink = _sink(path)
    assert sink.converter_pid is not None and sink.converter_pid != os.getpid()
    for i in range(300):
        sink.put(_plain_add(i))
    sink.put(PlainPause(PlainPause.KIND, 300, 0, 2))
    sink.put(PlainPause(PlainPause.KIND, 301, 2, 0))
    sink.close()
    records = read_trace(path).records
    assert [r.req_id for r in records if isinstance(r, RequestAdded)] == [f"r{i}" for i in range(300)]
    assert [type(r) for r in records[-2:]] == [Paused, Resumed] and records[-2].mode == "keep"
    assert sink.dropped == 0


def test_items_that_fail_to_pack_are_counted_and_recorded_as_lost(tmp_path):
    path = tmp_path / "t.msgpack"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink = _sink(path)
        sink.put(_plain_add(1))
        sink.put(_plain_add(2)._replace(prompt_ids=object()))  # msgpack cannot pack it: dropped on the engine side
        sink.put(_plain_add(3))
        sink.close()
    records = read_trace(path).records
    assert [r.req_id for r in records if isinstance(r, RequestAdded)] == ["r1", "r3"]
    lost = [r for r in records if isinstance(r, RecorderLost)]
    assert len(lost) == 1 and lost[0].count == 1


def test_a_dead_converter_is_reported_once_and_never_raises(tmp_path):
    path = tmp_path / "t.msgpack"
    sink = _sink(path)
    sink.put(_plain_add(0))
    sink.drain()
    os.kill(sink.converter_pid, signal.SIGKILL)
    sink._child.wait()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(1, 50):
            sink.put(_plain_add(i))
            sink.drain()
        sink.close()
    messages = [str(w.message) for w in caught if "tracesim recorder" in str(w.message)]
    assert len(messages) == 1 and "converter process stopped" in messages[0]
    assert sink.dropped >= 49


def test_without_a_converter_process_records_are_built_on_the_thread(tmp_path, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError("fork not allowed here")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    path = tmp_path / "t.msgpack"
    sink = _sink(path)
    assert sink.converter_pid is None
    for i in range(20):
        sink.put(_plain_add(i))
    sink.close()
    assert [r.req_id for r in read_trace(path).records] == [f"r{i}" for i in range(20)]


def test_a_killed_engine_keeps_everything_it_had_sent(tmp_path):
    """SIGKILL the recording process: the converter sees end of stream and closes a complete trace."""
    path = tmp_path / "t.msgpack"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_record_sidecar import _sink, _plain_add
        sink = _sink({str(path)!r})
        for i in range(1000):
            sink.put(_plain_add(i))
        sink.drain()  # sent to the converter
        for i in range(1000, 1100):
            sink.put(_plain_add(i))  # still queued in the engine process: lost with it
        print(sink.converter_pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    converter_pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{converter_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)  # the converter finishes on its own once the pipe closes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning: the trace was closed properly
        records = read_trace(path).records
    assert [r.req_id for r in records] == [f"r{i}" for i in range(1000)]


@pytest.mark.vllm
def test_process_and_thread_conversion_record_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    from tracesim.record.standalone import run_standalone

    def untimed(trace):  # the two runs differ only in clock readings
        return [r._replace(**{f: 0 for f in r._fields if f.endswith("_ns") and getattr(r, f) is not None})
                for r in trace.records]

    traces = {}
    for mode in ("process", "thread"):
        monkeypatch.setenv("TRACESIM_RECORD_CONVERT", mode)
        traces[mode] = run_standalone(str(tmp_path / f"{mode}.msgpack"), groups=6, pause_at_step=20,
                                      record_tokens=True)
    assert len(traces["process"].records) > 100
    assert untimed(traces["process"]) == untimed(traces["thread"])


def _every_kind() -> list:
    """One plain item of every kind, as capture.plain and the hooks make them."""
    return [
        _plain_add(1), _plain_add(2),
        PlainSched(PlainSched.KIND, 10, 11, 0, {"r1-0123abcd": 3, "r2-0123abcd": 3},
                   [("r1-0123abcd", 0), ("r2-0123abcd", 0)], [], [], [], {}, None, [], [], 2, 0, 1, 0, 0.25),
        PlainUpd(PlainUpd.KIND, 12, 13, 0, 1, None, [1, 1], ["stop", None], None, [[7], [8]], [[-0.5], None]),
        PlainAbort(PlainAbort.KIND, 14, ["r2-0123abcd"], "FINISHED_ABORTED"),
        PlainPause(PlainPause.KIND, 15, 0, 1), PlainReset(PlainReset.KIND, 16, True, False),
        PlainPause(PlainPause.KIND, 17, 1, 0), PlainLost(PlainLost.KIND, 18, 3),
    ]


def test_plain_items_cross_the_pipe_as_kind_tagged_arrays_and_are_named_again():
    for item in _every_kind():
        wire = msgpack.unpackb(msgpack.packb(item, use_bin_type=True), use_list=False, strict_map_key=False)
        assert wire[0] == item.kind == type(item).KIND and len(wire) == len(item._fields)
        named = from_wire(wire)
        assert type(named) is type(item) and named._asdict().keys() == item._asdict().keys()
    for bad in [("nope", 1), ("add", 1, "r"), ()]:
        with pytest.raises(ValueError, match="not a recorder item"):
            from_wire(bad)


def test_the_converter_process_and_the_thread_build_the_same_records_from_every_kind(tmp_path, monkeypatch):
    paths = {"process": tmp_path / "p.msgpack", "thread": tmp_path / "t.msgpack"}
    sink = _sink(paths["process"])
    assert sink.converter_pid is not None
    for item in _every_kind():
        sink.put(item)
    sink.close()

    def no_processes(*args, **kwargs):
        raise OSError("fork not allowed here")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    sink = _sink(paths["thread"])
    assert sink.converter_pid is None
    for item in _every_kind():
        sink.put(item)
    sink.close()
    process, thread = (read_trace(p).records for p in paths.values())
    assert process == thread
    assert [r.KIND for r in process] == ["add", "add", "sched", "upd", "abort", "pause", "cache_reset", "resume", "lost"]
    assert process[3].outs[0].finish_reason == "stop" and process[3].outs[0].token_ids == (7,)


# The data path: the shared-memory ring (default; small here, so that 1,000 items overflow it) or the pipe.
TRANSPORTS = pytest.mark.parametrize("ring_bytes", [256 << 10, None], ids=["ring", "pipe"])


@TRANSPORTS
def test_a_stopped_converter_never_blocks_the_engine_and_loses_nothing(tmp_path, ring_bytes):
    """A converter that does not read (stopped, as one starved of CPU): the engine's sends go to the backlog
    at once instead of waiting for room in the ring or pipe, and reach the trace once the converter runs again."""
    path = tmp_path / "t.msgpack"
    sink = _sink(path, ring_bytes=ring_bytes)
    assert (sink._ring is not None) == (ring_bytes is not None)
    sink.stop_thread()
    os.kill(sink.converter_pid, signal.SIGSTOP)
    try:
        prompt = list(range(2000))  # ~4 KB per item: 1,000 of them overflow any pipe's capacity
        slowest_s = 0.0
        for i in range(1000):
            sink.put(_plain_add(i)._replace(prompt_ids=prompt))
            if i % 50 == 49:
                t0 = time.perf_counter()
                sink.drain()
                slowest_s = max(slowest_s, time.perf_counter() - t0)
        assert sink.backlog_bytes > 0 and sink.peak_backlog_bytes >= sink.backlog_bytes
        assert slowest_s < 1.0  # a blocking write would hang here until the converter reads
    finally:
        os.kill(sink.converter_pid, signal.SIGCONT)
    sink.close()
    assert sink.dropped == 0 and sink.backlog_bytes == 0
    records = read_trace(path).records
    assert [r.req_id for r in records] == [f"r{i}" for i in range(1000)]


@TRANSPORTS
def test_a_full_backlog_drops_whole_sends_and_the_trace_says_how_many(tmp_path, ring_bytes):
    path = tmp_path / "t.msgpack"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink = _sink(path, max_backlog_bytes=64 << 10, ring_bytes=ring_bytes)
        sink.stop_thread()
        os.kill(sink.converter_pid, signal.SIGSTOP)
        try:
            prompt = list(range(2000))
            for i in range(1000):
                sink.put(_plain_add(i)._replace(prompt_ids=prompt))
                sink.drain()  # one item per send
            assert sink.dropped > 0 and sink.peak_backlog_bytes <= 64 << 10
        finally:
            os.kill(sink.converter_pid, signal.SIGCONT)
        sink.close()
    records = read_trace(path).records
    added = [int(r.req_id[1:]) for r in records if isinstance(r, RequestAdded)]
    lost = [r.count for r in records if isinstance(r, RecorderLost)]
    assert added == sorted(added) and len(added) + sum(lost) == 1000  # every item written or counted
    assert sum(lost) == sink.dropped


@pytest.mark.parametrize("nice", [0, 10])
def test_the_converter_runs_at_the_configured_niceness_above_the_engine(tmp_path, nice):
    sink = _sink(tmp_path / "t.msgpack", nice=nice)
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, sink.converter_pid) == min(19, own + nice)
    finally:
        sink.close()


def test_the_converter_niceness_is_read_from_the_environment():
    from tracesim.record.config import RecorderConfig

    assert RecorderConfig.from_env({}).converter_nice == 10
    assert RecorderConfig.from_env({"TRACESIM_RECORD_CONVERTER_NICE": "0"}).converter_nice == 0
    assert RecorderConfig.from_env({"TRACESIM_RECORD_CONVERTER_NICE": "oops"}).converter_nice == 10


def test_items_encoded_on_the_engine_thread_reach_the_trace_in_order_and_a_bad_one_is_counted(tmp_path):
    path = tmp_path / "t.msgpack"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink = _sink(path)
        sink.stop_thread()  # what is queued stays queued until close
        sink.put_encoded(_plain_add(1))
        sink.put(_plain_add(2))  # queued as is, encoded by the drain: the order holds across both
        sink.put_encoded(_plain_add(3)._replace(prompt_ids=object()))  # cannot be encoded: lost, counted
        sink.put_encoded(_plain_add(4))
        assert [type(item) for item in sink._pending].count(bytes) == 2
        sink.close()
    records = read_trace(path).records
    assert [r.req_id for r in records if isinstance(r, RequestAdded)] == ["r1", "r2", "r4"]
    assert [r.count for r in records if isinstance(r, RecorderLost)] == [1]


def test_the_ring_carries_a_byte_stream_across_its_end_and_takes_only_what_fits():
    from tracesim.record.ring import Ring, supported

    if not supported():
        pytest.skip("the shared-memory ring needs x86-64 and memfd_create")
    writer = Ring.create(64)
    reader = Ring(writer.fd, 64)  # the converter maps the same memory by the fd it inherits
    try:
        stream = bytes(range(200))
        assert writer.put(stream[:50]) == 50 and reader.take() == stream[:50]
        assert writer.put(stream[50:100]) == 50  # wraps around the end
        assert writer.put(stream[100:200]) == 14  # only what fits: the rest is the writer's to put next
        assert reader.take() == stream[50:114] and reader.take() == b""
        assert writer.put(stream[114:200]) == 64 and reader.take() == stream[114:178]
        assert writer.written == reader.taken == 178
    finally:
        reader.close()
        writer.close()


def test_the_converter_reads_the_data_from_the_ring_by_default(tmp_path):
    from tracesim.record.ring import supported

    sink = _sink(tmp_path / "t.msgpack")
    try:
        assert (sink._ring is not None) == supported()
    finally:
        sink.close()
