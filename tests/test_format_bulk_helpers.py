"""The compiled columnizer's helpers for reading and writing whole traces (tracesim/format/_fastcols.pyx).

Reading groups records by type and finds the trace start while it decodes (``KindGrouper``): the trace's
``_kinds`` and its index's ``start_ns`` then need no pass over the records, and must be what those passes give.
Writing builds its frames in C (``frames_of``): the same frames, the same bytes, as the writer's Python."""

from __future__ import annotations

import pytest

from conftest import TRACES
from tracesim.format import read_trace
from tracesim.format.columns import compiled_available
from tracesim.format.records import RequestAdded

pytestmark = pytest.mark.skipif(not compiled_available(), reason="the compiled columnizer is not built")


def _grouped(records) -> dict:
    by_type: dict = {}
    for r in records:
        by_type.setdefault(type(r), []).append(r)
    return by_type


@pytest.mark.parametrize("name", ["vllm-abort.msgpack", "vllm-wait-preempt.msgpack", "synthetic-small.msgpack",
                                  "vllm-async-engine.msgpack"])
def test_the_grouping_and_start_found_while_reading_are_those_of_the_records(name):
    trace = read_trace(TRACES / name)
    assert trace._by_type_key == (id(trace.records), len(trace.records))  # handed over, not built later
    assert trace.read_start() == min(r.t_ns for r in trace.records)
    expected = _grouped(trace.records)
    assert list(trace._kinds()) == list(expected)  # kinds in order of first appearance (Trace.counts)
    assert all(trace._kinds()[k] == v for k, v in expected.items())
    assert trace.index().start_ns == min(r.t_ns for r in trace.records)


def test_the_hint_is_dropped_when_the_records_change():
    trace = read_trace(TRACES / "vllm-abort.msgpack")
    first = min(range(len(trace.records)), key=lambda i: trace.records[i].t_ns)
    trace.records = trace.records[:first] + trace.records[first + 1:]  # the earliest record removed
    assert trace.read_start() is None
    assert trace.index().start_ns == min(r.t_ns for r in trace.records)
    assert list(trace._kinds()) == list(_grouped(trace.records))


def test_a_start_the_grouper_cannot_take_is_left_to_the_index():
    from tracesim.format.columns import _fastcols

    add = RequestAdded(t_ns=5, req_id="a", prompt_len=1)
    for odd in (None, 1.5, True, 2 ** 70):
        grouper = _fastcols.KindGrouper()
        grouper.add([add, add._replace(t_ns=odd)])
        assert grouper.start_ns is None, odd
        assert grouper.by_type == {RequestAdded: [add, add._replace(t_ns=odd)]}
    grouper = _fastcols.KindGrouper()
    assert grouper.start_ns == 0  # no records: the start of an empty trace
    grouper.add([add._replace(t_ns=9), add])
    grouper.add([add._replace(t_ns=-3)])
    assert grouper.start_ns == -3


def test_the_writers_frames_built_in_c_are_the_pythons(tmp_path, monkeypatch):
    from tracesim.format import Trace, write_trace
    from tracesim.format import trace as trace_module
    from tracesim.format.columns import _fastcols
    from tracesim.format.writer import TraceWriter

    trace = read_trace(TRACES / "vllm-async-engine.msgpack")
    procs = [i % 3 for i in range(len(trace.records))]  # some records from other processes
    for batch, batch_procs in ((trace.records, None), (trace.records, procs), (tuple(trace.records[:50]), None)):
        assert _fastcols.frames_of(batch, batch_procs) == TraceWriter.frames_of(batch, batch_procs)
    with pytest.raises(ValueError):
        _fastcols.frames_of(trace.records, procs[:-1])
    header = trace.header._replace(processes=tuple(trace.header.processes) * 3) if trace.header.processes else None
    multi = Trace(header or trace.header, trace.records, procs if header else [])
    fast, plain = tmp_path / "fast.msgpack", tmp_path / "plain.msgpack"
    write_trace(fast, multi)
    monkeypatch.setattr(trace_module, "compiled_columnizer", lambda: None)  # the Python frames
    write_trace(plain, multi)
    assert fast.read_bytes() == plain.read_bytes()


def _ids(records):
    """Every request / group id object the records hold, where ``codec.id_plans`` says ids are."""
    from tracesim.format.codec import ID_ENTRIES, ID_STR, ID_TUPLE, id_plans

    plans = id_plans()
    for r in records:
        for i, op, entry_fields in plans.get(type(r), ()):
            v = r[i]
            if op == ID_STR:
                yield v
            elif v is not None:
                yield from (e[j] for e in v for j in entry_fields) if op == ID_ENTRIES else v
            assert op in (ID_STR, ID_TUPLE, ID_ENTRIES)


@pytest.mark.parametrize("name", ["vllm-abort.msgpack", "vllm-wait-preempt.msgpack", "vllm-async-engine.msgpack"])
def test_reading_keeps_one_str_per_distinct_id_and_the_same_records(name, monkeypatch):
    trace = read_trace(TRACES / name)
    ids = [v for v in _ids(trace.records) if isinstance(v, str)]
    first: dict = {}
    assert all(first.setdefault(v, v) is v for v in ids)  # each id: one object, however often it recurs
    assert len(ids) > 3 * len(first)  # (ids recur: the check above has something to check)
    monkeypatch.setenv("TRACESIM_PURE_PYTHON", "1")  # the reference reader: no interning, the same records
    assert read_trace(TRACES / name).records == trace.records


def test_ids_are_only_shared_in_records_nothing_else_holds():
    from tracesim.format.codec import id_plans
    from tracesim.format.columns import _fastcols

    def fresh(t_ns):  # a new str each time (a literal would be one constant object)
        return RequestAdded(t_ns=t_ns, req_id="".join(["re", "q"]), prompt_len=1)

    grouper = _fastcols.KindGrouper(id_plans())
    grouper.add([fresh(1), fresh(2)])  # as the reader hands them over: held by the chunk's list only
    x, y = grouper.by_type[RequestAdded]
    assert x.req_id is y.req_id
    held = fresh(3)  # referred to from elsewhere too: left as it is
    grouper.add([held])
    assert held.req_id == x.req_id and held.req_id is not x.req_id


def test_ids_of_any_characters_are_shared_only_with_equal_ids(tmp_path):
    # ids in 1-, 2- and 4-byte str kinds, some equal in length and hash-cache slot candidates to others
    from helpers import header
    from tracesim.format import TraceWriter
    from tracesim.format.records import OutputDelivered

    names = ["a-1", "a-2", "é-1", "é-2", "中-1", "中-2", "😀-1", "😀-2", "", "a" * 300]
    with TraceWriter(tmp_path / "t.msgpack", header()) as w:
        for t_ns in range(200):
            name = names[t_ns * 7 % len(names)]
            w.append(OutputDelivered(t_ns=t_ns, req_id=name, start_idx=0, num_tokens=1, finished=False))
    records = read_trace(tmp_path / "t.msgpack").records
    assert [r.req_id for r in records] == [names[t * 7 % len(names)] for t in range(200)]
    by_value: dict = {}
    assert all(by_value.setdefault(r.req_id, r.req_id) is r.req_id for r in records)
    assert len(by_value) == len(names)


def test_replay_starts_a_changed_trace_at_its_own_first_record():
    # replay takes the start found while reading; once the records changed it must find the start itself
    from tracesim.sim.replay import _Scan

    trace = read_trace(TRACES / "vllm-abort.msgpack")
    start = trace.read_start()
    assert _Scan(trace).t0 == start
    keep = [i for i, r in enumerate(trace.records) if r.t_ns != start]  # every record at the start removed
    trace.records = [trace.records[i] for i in keep]
    trace.procs = [trace.procs[i] for i in keep] if trace.procs else []
    assert _Scan(trace).t0 == min(r.t_ns for r in trace.records) > start
