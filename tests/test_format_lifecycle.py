"""Request lifecycles in the trace index (format/lifecycle.py): one per engine incarnation, telling what the
checkers' own per-request state tells (check/index.py), on the bundled recordings and simulated runs."""

from __future__ import annotations

import pytest
from conftest import TRACES
from helpers import header, simulated

from tracesim.check.index import build_index
from tracesim.format import (
    Aborted, OutReq, RequestAdded, SchedReq, StepScheduled, StepUpdated, Trace, read_trace,
)


def _agree(trace) -> int:
    """Assert that the index's lifecycles and the checkers' engine incarnations match; return how many."""
    lives, incs = trace.index().lifecycles, build_index(trace).engine
    assert list(lives) == list(incs)
    n = 0
    for req_id, inc_list in incs.items():
        got = lives[req_id]
        assert [(x.add, x.proc, x.ended, x.end_rec) for x in got] == \
            [(e.add, e.proc, e.ended, e.end_rec) for e in inc_list], req_id
        assert [x.sampled for x in got] == [sum(n for _s, n, _u in e.outs) for e in inc_list], req_id
        n += len(got)
    return n


@pytest.mark.parametrize("name", sorted(p.name for p in TRACES.glob("*.msgpack")))
def test_lifecycles_agree_with_the_checkers_on_bundled_recordings(name):
    assert _agree(read_trace(TRACES / name)) > 0


@pytest.mark.parametrize("scenario", ["retry-reuse-ids.toml", "wait-kv-pressure.toml", "keep-bad-bindings.toml"])
def test_lifecycles_agree_with_the_checkers_on_simulated_runs(scenario):
    trace = simulated(scenario)
    assert _agree(trace) > 0
    # KV pressure preempts: the lifecycles carry each preemption's schedule
    if scenario == "wait-kv-pressure.toml":
        preempted = sum(len(x.preempted) for incs in trace.index().lifecycles.values() for x in incs)
        assert preempted == sum(len(r.preempted) for r in trace.of(StepScheduled))


def test_lifecycle_of_a_request_added_scheduled_preempted_and_finished():
    add = RequestAdded(0, "a", prompt_len=4)
    s0 = StepScheduled(1, 2, 0, (SchedReq("a", 4, 0),))
    s1 = StepScheduled(3, 4, 1, (), preempted=("a",))
    s1_again = StepScheduled(5, 6, 1, (SchedReq("a", 0, 1),))  # a repeat the index does not take
    u0 = StepUpdated(7, 8, 0, (OutReq("a", 1, "stop"),))
    late = Aborted(9, ("a",))  # after the finish: the first end wins
    again = RequestAdded(10, "a")  # a new incarnation of the id
    trace = Trace(header(), [add, s0, s1, s1_again, u0, late, again])
    (first, second) = trace.index().lifecycles["a"]
    assert (first.add, first.first_sched, first.preempted, first.sampled) == (add, s0, [s1], 1)
    assert (first.ended, first.end_rec) == ("finished", u0)
    assert (second.add, second.first_sched, second.ended) == (again, None, None)


def test_a_schedule_before_the_add_makes_a_placeholder_the_add_replaces():
    s0 = StepScheduled(1, 2, 0, (SchedReq("a", 4, 0),))
    add = RequestAdded(3, "a")
    abort = Aborted(4, ("a",), side="engine")
    client_abort = Aborted(5, ("b",), side="client")
    b = RequestAdded(0, "b")
    trace = Trace(header(), [b, s0, add, abort, client_abort])
    (a,) = trace.index().lifecycles["a"]
    assert (a.add, a.first_sched, a.ended, a.end_rec) == (add, s0, "aborted", abort)
    (only_b,) = trace.index().lifecycles["b"]
    assert only_b.ended is None  # the client's abort ends nothing in the engine


def test_one_record_object_standing_twice_counts_once():
    add = RequestAdded(0, "a")
    s0 = StepScheduled(1, 2, 0, (SchedReq("a", 4, 0),), preempted=())
    u0 = StepUpdated(3, 4, 0, (OutReq("a", 2),))
    trace = Trace(header(), [add, s0, s0, u0, u0])  # a replayed message, the same object twice
    (a,) = trace.index().lifecycles["a"]
    assert (a.first_sched, a.sampled) == (s0, 2)
    assert _agree(trace) == 1


def test_records_grouped_by_type_in_c_as_by_the_python_loop():
    from tracesim.format import trace as trace_mod
    from tracesim.format.columns import _fastcols

    trace = read_trace(TRACES / "vllm-wait-preempt.msgpack")
    records = trace.records + [trace.records[0]]  # a kind seen again after others
    ref: dict = {}
    for r in records:
        ref.setdefault(type(r), []).append(r)
    got = trace_mod.group_by_type(records)
    assert list(got) == list(ref) and all(got[k] == ref[k] for k in ref)
    if _fastcols is not None:  # the compiled path was the one taken
        assert _fastcols.group_by_type(records) == ref
    counts: dict = {}
    for r in trace.records:
        counts[r.KIND] = counts.get(r.KIND, 0) + 1
    assert list(trace.counts().items()) == list(counts.items())  # in order of first appearance


def test_the_trace_start_alone_does_not_pair_the_steps():
    trace = read_trace(TRACES / "vllm-keep.msgpack")
    ix = trace.index()
    assert ix.start_ns == min(r.t_ns for r in trace.records)
    assert ix._unpaired  # fidelity reads only the start: no pairing pass
    assert ix.steps and not ix._unpaired  # the first step attribute pairs them
