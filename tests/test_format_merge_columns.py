"""Merging per-process traces into one timeline, and the columnar view."""

from __future__ import annotations

import numpy as np

from tracesim.format import (
    OutputDelivered, RequestAdded, Resumed, StepScheduled, Trace, WeightsUpdated, read_trace, write_trace,
)
from tracesim.format.columns import read_columns, to_columns
from tracesim.format.merge import merge_traces
from tracesim.format.synthetic import synthetic_trace

from helpers import header


def test_same_host_processes_merge_on_the_shared_monotonic_clock():
    engine = Trace(header(role="engine-core", pid=10, mono_anchor_ns=100, wall_anchor_ns=5_000),
                   [StepScheduled(10, 12, 0), StepScheduled(30, 31, 1)])
    client = Trace(header(role="client", pid=11, mono_anchor_ns=900, wall_anchor_ns=99_999),
                   [RequestAdded(5, "r0", side="client"), OutputDelivered(20, "r0", 0, 1)])
    merged = merge_traces([engine, client])
    assert [r.t_ns for r in merged.records] == [5, 10, 20, 30]
    assert merged.procs == [1, 0, 1, 0]
    assert [p.role for p in merged.header.processes] == ["engine-core", "client"]


def test_other_host_is_rebased_by_the_wall_clock_anchors():
    ref = Trace(header(host="a", mono_anchor_ns=1_000, wall_anchor_ns=1_000_000), [Resumed(1_500)])
    # Host b's monotonic clock reads 50 when host a's reads 1_000 (same wall instant).
    other = Trace(header(host="b", mono_anchor_ns=50, wall_anchor_ns=1_000_000),
                  [WeightsUpdated(100, 600, 1, set_ns=600), Resumed(700)])
    merged = merge_traces([ref, other])
    assert [(r.KIND, r.t_ns) for r in merged.records] == [("weights", 1_050), ("resume", 1_500), ("resume", 1_650)]
    w = merged.records[0]
    assert (w.end_ns, w.set_ns) == (1_550, 1_550)
    # The merged header is on one clock: merging it again changes nothing.
    again = merge_traces([merged])
    assert again.records == merged.records and again.procs == merged.procs


def test_ties_keep_input_then_stream_order_and_merged_trace_round_trips(tmp_path):
    a = Trace(header(pid=1), [Resumed(5, "a1"), Resumed(5, "a2")])
    b = Trace(header(pid=2), [Resumed(5, "b1")])
    merged = merge_traces([b, a])
    assert [r.side for r in merged.records] == ["b1", "a1", "a2"]
    write_trace(tmp_path / "m.msgpack", merged)
    back = read_trace(tmp_path / "m.msgpack")
    assert back.records == merged.records and back.procs == merged.procs


def test_columns_from_file_match_columns_from_records(tmp_path):
    trace = synthetic_trace(waves=2)
    path = tmp_path / "t.msgpack"
    write_trace(path, trace)
    a, b = read_columns(path), to_columns(trace)
    assert a.tables.keys() == b.tables.keys()
    for kind, table in a.tables.items():
        for name, col in table.items():
            assert col.dtype == b[kind][name].dtype, (kind, name)
            if col.dtype == object:
                assert list(col) == list(b[kind][name])
            else:
                np.testing.assert_array_equal(col, b[kind][name])
    sched = a["sched"]
    assert sched["step"].tolist() == list(range(len(sched["step"])))
    reqs = a["sched.reqs"]
    assert reqs["row"].max() == len(sched["step"]) - 1
    assert int(sched["reqs"].sum()) == len(reqs["req_id"])
    assert a.count("sched") == len(sched["step"]) and a.count("sched.reqs") == len(reqs["row"])
    assert a.count("no-such-kind") == 0 and "sched" in a and "no-such-kind" not in a
    # Optional ints become float with NaN: engine-side adds carry no version label.
    add = a["add"]
    assert np.isnan(add["version"][add["side"] == "engine"]).all()
    assert not np.isnan(add["version"][add["side"] == "client"]).any()
