"""The trace index (format/index.py): one pass that pairs each engine step's records and finds the trace start,
shared by check, plots, the step-time fit, replay and fidelity."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracesim.check import check_trace
from tracesim.format import (
    OutputDelivered, OutReq, RequestAdded, SchedReq, StepExecuted, StepScheduled, StepUpdated, Trace, read_trace,
)
from tracesim.format.index import start_of
from tracesim.format.merge import merge_traces
from tracesim.sim.steptime import step_costs
from tracesim.viz.extract import TraceView

from helpers import header, simulated

TRACES = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "traces").glob("*.msgpack"))


def naive_last(trace) -> tuple:
    """The pairing every reader used to build for itself: (proc, step) -> the last record of each kind."""
    out = ({}, {}, {})
    slot = {StepScheduled: 0, StepExecuted: 1, StepUpdated: 2}
    for proc, r in trace.with_procs():
        if type(r) in slot:
            out[slot[type(r)]][(proc, r.step)] = r
    return out


def sched(t_ns: int, step: int, *req_ids: str) -> StepScheduled:
    return StepScheduled(t_ns=t_ns, end_ns=t_ns + 1, step=step,
                         reqs=tuple(SchedReq(req_id=q, prefill_tokens=0, decode_tokens=1) for q in req_ids))


def upd(t_ns: int, step: int, *req_ids: str) -> StepUpdated:
    return StepUpdated(t_ns=t_ns, end_ns=t_ns + 1, step=step, outs=tuple(OutReq(req_id=q, sampled=1) for q in req_ids))


def execd(t_ns: int, step: int) -> StepExecuted:
    return StepExecuted(t_ns=t_ns, end_ns=t_ns + 1, step=step)


@pytest.mark.parametrize("path", TRACES, ids=lambda p: Path(p).stem)
def test_bundled_traces_pair_every_step_as_the_readers_did(path):
    trace = read_trace(path)
    ix = trace.index()
    assert ix.last_records() == naive_last(trace)
    assert ix.start_ns == min(r.t_ns for r in trace.records)
    assert ix.n_exec == len(trace.of(StepExecuted)) and ix.n_upd == len(trace.of(StepUpdated))
    assert [st.sched for st in ix.step_order] == trace.of(StepScheduled)  # no repeats in a recording
    for (proc, step), st in ix.steps.items():
        assert st.proc == proc and st.sched.step == step
        assert st.exec is None or st.exec.step == step
        assert st.upd is None or st.upd.step == step


def test_a_simulated_run_pairs_each_step_once_in_order():
    trace = simulated(num_prompts=24)
    ix = trace.index()
    steps = [st.sched.step for st in ix.step_order]
    assert steps == list(range(len(steps))) and len(steps) > 10
    assert not ix.step_faults and not ix.extras
    in_flight = {s for ss in ix.in_flight_at_end.values() for s in ss}
    assert all(st.upd is not None for st in ix.step_order if st.sched.step not in in_flight)
    sched_, execs, upds = ix.engine_steps()[1:]
    last = naive_last(trace)
    assert sched_ == {k[1]: r for k, r in last[0].items()} and upds == {k[1]: r for k, r in last[2].items()}
    assert execs == {k[1]: r for k, r in last[1].items()}


def test_trace_start_is_the_earliest_time_not_the_first_record():
    # a step's record is written when the step ends: the stream is not in time order
    trace = Trace(header(), [upd(50, 0), sched(10, 1), RequestAdded(t_ns=7, req_id="a", side="engine")])
    ix = trace.index()
    assert (ix.start_ns, ix.first_ns) == (7, 50)
    assert Trace(header(), []).index().start_ns == 0
    assert start_of([]) == 0


def test_merged_processes_keep_their_steps_apart():
    a = Trace(header(role="engine-core", pid=1), [sched(10, 0, "a"), execd(12, 0), upd(14, 0, "a")])
    b = Trace(header(role="engine-core", pid=2), [sched(11, 0, "b"), upd(20, 0, "b"), sched(21, 1, "b")])
    merged = merge_traces([a, b])
    ix = merged.index()
    assert set(ix.steps) == {(0, 0), (1, 0), (1, 1)}
    assert ix.steps[(1, 0)].upd.outs[0].req_id == "b" and ix.steps[(1, 0)].exec is None
    assert ix.in_flight_at_end == {1: [1]} and not ix.step_faults
    proc, scheds, _execs, upds = ix.engine_steps()  # one engine's timing: the first to schedule
    assert proc == 0 and set(scheds) == {0} and upds[0].outs[0].req_id == "a"
    assert ix.last_records() == naive_last(merged)


def test_missing_repeated_and_early_records_are_faults_and_the_last_record_still_wins():
    first_sched1, again_sched1 = sched(20, 1, "a"), sched(25, 1, "a")
    early_exec3, exec3 = execd(29, 3), execd(33, 3)
    recs = [
        sched(10, 0, "a"), execd(11, 0), upd(12, 0, "a"),
        first_sched1, again_sched1,  # a repeated schedule
        sched(30, 2, "a"),  # never updated, though step 3 was: skipped
        early_exec3,  # executed before it was scheduled
        sched(31, 3, "a"), exec3, upd(34, 3, "a"), upd(35, 3, "a"),  # updated twice
        upd(36, 7),  # never scheduled
        sched(40, 4, "a"),  # still in flight at the end
    ]
    trace = Trace(header(), recs)
    ix = trace.index()
    assert [f[0] for f in ix.step_faults] == [
        "sched_twice", "exec_unscheduled", "upd_twice", "upd_unscheduled", "upd_missing", "upd_missing"]
    assert [f[2].step for f in ix.step_faults if f[0] == "upd_missing"] == [1, 2]
    assert ix.in_flight_at_end == {0: [4]}
    assert ix.steps[(0, 1)].sched is first_sched1 and ix.steps[(0, 3)].exec is exec3
    assert ix.steps[(0, 3)].upd.t_ns == 34
    sched_, execs, upds = ix.last_records()
    assert sched_[(0, 1)] is again_sched1 and execs[(0, 3)] is exec3 and upds[(0, 3)].t_ns == 35
    assert (0, 7) in upds and (0, 7) not in sched_
    assert ix.last_records() == naive_last(trace)
    # an execution seen only before its schedule is still the step's last one
    lone = Trace(header(), [execd(5, 0), sched(6, 0)])
    assert lone.index().last_records()[1] == {(0, 0): lone.records[0]}
    assert lone.index().steps[(0, 0)].exec is None


def test_the_index_is_built_once_per_trace_and_shared_by_check_plots_and_the_fit():
    trace = simulated(num_prompts=24)
    ix = trace.index()
    check_trace(trace)
    view = TraceView(trace)
    assert len(view.steps) == len(ix.steps) and view.t0_ns == ix.start_ns
    step_costs(trace)
    assert trace.index() is ix
    trace.records.append(OutputDelivered(t_ns=ix.start_ns - 5, req_id="x", start_idx=0, num_tokens=1))
    rebuilt = trace.index()  # the records grew: a new index
    assert rebuilt is not ix and rebuilt.start_ns == ix.start_ns - 5


def test_replays_scan_hands_the_index_the_same_step_records_and_start():
    from tracesim.format.index import index_trace
    from tracesim.sim.replay import _Scan

    a = Trace(header(role="engine-core", pid=1), [sched(10, 0, "a"), execd(12, 0), upd(14, 0, "a"), upd(15, 3)])
    b = Trace(header(role="client", pid=2), [RequestAdded(t_ns=3, req_id="a", side="client")])
    for trace in (simulated(num_prompts=24), merge_traces([a, b])):
        fresh = index_trace(trace)
        scan = _Scan(trace)  # pairs a well-formed trace's steps itself; trace.index() pairs on first use
        ix = trace.index()
        assert scan.t0 == ix.start_ns == fresh.start_ns and ix.first_ns == fresh.first_ns
        assert ix.last_records() == fresh.last_records() == naive_last(trace)
        assert [f[0] for f in ix.step_faults] == [f[0] for f in fresh.step_faults]
        assert ix.in_flight_at_end == fresh.in_flight_at_end and ix.n_upd == fresh.n_upd


def _scan_steps(trace) -> tuple:
    """What replay's scan takes from ``trace`` (the steps it collected from a well-formed recording and handed
    to the index, else the index's pairing), with whether the index was left unpaired."""
    from tracesim.sim.replay import _Scan

    scan = _Scan(trace)
    assert trace.index().engine_steps()[1] is scan.scheds  # replay reads its steps from the index, always
    return (scan.scheds, scan.execs, scan.upds, scan.t0), trace.index()._unpaired


def _index_steps(trace) -> tuple:
    ix = Trace(trace.header, trace.records, trace.procs).index()
    _proc, scheds, execs, upds = ix.engine_steps()
    return scheds, execs, upds, ix.start_ns


@pytest.mark.parametrize("path", TRACES, ids=lambda p: Path(p).stem)
def test_replays_scan_pairs_a_recording_as_the_index_does(path):
    trace = read_trace(path)
    steps, index_left_unpaired = _scan_steps(trace)
    assert steps == _index_steps(trace)
    assert index_left_unpaired  # well formed: the index took the scan's steps, with no pairing pass


@pytest.mark.parametrize("odd", ["repeated_sched", "exec_after_upd", "exec_twice", "upd_twice", "upd_unscheduled",
                                 "second_engine"])
def test_replays_scan_leaves_odd_step_streams_to_the_index(odd):
    good = [sched(10, 0, "a"), execd(11, 0), upd(12, 0, "a"), sched(20, 1, "a"), execd(21, 1), upd(22, 1, "a")]
    procs = [0] * len(good)
    extra = {"repeated_sched": sched(25, 1, "a"), "exec_after_upd": execd(26, 1), "exec_twice": execd(21, 0),
             "upd_twice": upd(27, 1, "a"), "upd_unscheduled": upd(28, 5, "a"), "second_engine": sched(29, 0, "b")}[odd]
    records = good + [extra]
    procs = procs + [1 if odd == "second_engine" else 0]
    trace = Trace(header(), records, procs if odd == "second_engine" else [])
    if odd == "second_engine":
        trace.header = trace.header._replace(processes=trace.header.processes * 2)
    steps, index_left_unpaired = _scan_steps(trace)
    assert not index_left_unpaired  # the index paired it
    assert steps == _index_steps(trace)
