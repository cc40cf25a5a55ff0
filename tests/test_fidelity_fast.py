"""fidelity.compare's compiled passes (format/_fastcols.pyx) agree with its pure-Python path, the reference:
the C helpers on their own (odd input included: each answers None, or stops early, where Python must judge),
and whole ``Fidelity`` results, floats bit for bit, via both paths on replays of a bundled recording."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from tracesim.format import columns, read_trace
from tracesim.format.index import start_of
from tracesim.format.records import OutReq, SchedReq, StepScheduled, StepUpdated
from tracesim.format.trace import Trace
from tracesim.sim import fidelity
from tracesim.sim.fidelity import compare
from tracesim.sim.replay import replay

RECORDED = os.path.join(os.path.dirname(__file__), "..", "traces", "vllm-async-engine.msgpack")

fast = columns._fastcols
needs_compiled = pytest.mark.skipif(not columns.compiled_available(), reason="tracesim.format._fastcols not built")


@pytest.fixture(scope="module")
def traces():
    """The recording, its exact replay and a replay with a fitted step-time model (non-zero errors)."""
    from tracesim.sim.steptime import fit

    recorded = read_trace(RECORDED)
    return recorded, replay(recorded), replay(recorded, timing="fitted", steptime=fit(recorded))


def _fresh(trace: Trace) -> Trace:
    """A copy with nothing cached (grouping, index, trace start), so each path computes everything."""
    return Trace(trace.header, list(trace.records), list(trace.procs), None)


def _exactly(f) -> list:
    """A Fidelity's fields with their types, floats by repr (bit for bit)."""
    return [(type(v).__name__, repr(v)) for v in f.to_dict().values()]


def _both_paths(monkeypatch, recorded, simulated) -> tuple:
    compiled = compare(_fresh(recorded), _fresh(simulated))
    monkeypatch.setenv("TRACESIM_PURE_PYTHON", "1")
    try:
        assert fidelity.compiled_columnizer() is None
        pure = compare(_fresh(recorded), _fresh(simulated))
    finally:
        monkeypatch.delenv("TRACESIM_PURE_PYTHON")
    return compiled, pure


@needs_compiled
@pytest.mark.parametrize("which", ["exact", "fitted", "fewer", "recorded_shorter"])
def test_compare_is_identical_via_both_paths(traces, monkeypatch, which):
    recorded, exact, fitted = traces
    simulated = {"exact": exact, "fitted": fitted, "fewer": exact, "recorded_shorter": exact}[which]
    if which == "fewer":  # one request fewer in a middle step's batch: a first mismatch there
        recs = list(exact.records)
        k = [i for i, r in enumerate(recs) if type(r) is StepScheduled and r.reqs][len(recs) // 200]
        recs[k] = recs[k]._replace(reqs=recs[k].reqs[1:])
        simulated = Trace(exact.header, recs, list(exact.procs), None)
    if which == "recorded_shorter":  # the recording's last schedule missing: a length difference
        last = max(i for i, r in enumerate(recorded.records) if type(r) is StepScheduled)
        recorded = Trace(recorded.header, recorded.records[:last] + recorded.records[last + 1:],
                         (recorded.procs[:last] + recorded.procs[last + 1:]) if recorded.procs else [], None)
    compiled, pure = _both_paths(monkeypatch, recorded, simulated)
    assert _exactly(compiled) == _exactly(pure)
    if which == "fitted":
        assert compiled.step_err_median > 0 and compiled.request_err_median > 0  # the floats were compared
    if which == "fewer":
        assert compiled.first_mismatch is not None


@needs_compiled
def test_min_t_ns_matches_start_of_or_declines(traces, monkeypatch):
    recorded = traces[0]
    monkeypatch.setenv("TRACESIM_PURE_PYTHON", "1")
    reference = start_of(recorded.records)
    monkeypatch.delenv("TRACESIM_PURE_PYTHON")
    assert fast.min_t_ns(recorded.records) == reference == start_of(recorded.records)
    assert fast.min_t_ns([]) == 0 == start_of([])
    rec = recorded.records[5]
    assert fast.min_t_ns([rec._replace(t_ns=True), rec]) is None  # a bool: Python's min decides (True)
    assert start_of([rec._replace(t_ns=True), rec]) is True
    assert fast.min_t_ns([rec, rec._replace(t_ns=2**70)]) is None  # outside int64
    assert start_of([rec, rec._replace(t_ns=-2**70)]) == -2**70
    assert fast.min_t_ns([rec, rec._replace(t_ns=1.5)]) is None
    assert start_of([rec, rec._replace(t_ns=1.5)]) == 1.5
    other = SimpleNamespace(note="no t_ns")
    assert fast.min_t_ns([other, rec]) is None  # not only event records: the hasattr path
    assert start_of([other, rec]) == rec.t_ns
    assert fast.min_t_ns([(), rec]) is None
    for path in ("compiled", "pure"):  # the same error either way
        if path == "pure":
            monkeypatch.setenv("TRACESIM_PURE_PYTHON", "1")
        with pytest.raises(TypeError):
            start_of([rec, rec._replace(t_ns="late")])


@needs_compiled
def test_finishes_and_sampled_matches_python_or_declines(traces):
    for trace in traces:
        upds = trace.of(StepUpdated)
        got = fast.finishes_and_sampled(upds, StepUpdated, OutReq)
        assert got == (fidelity._finishes(trace), sum(o.sampled for r in upds for o in r.outs))
        assert got[0] and got[1] > 0
    assert fast.finishes_and_sampled([], StepUpdated, OutReq) == ([], 0)
    none_finished = StepUpdated(1, 2, 0, (OutReq("a", 1), OutReq("b", 2)))
    no_outs = StepUpdated(3, 4, 1)
    done = StepUpdated(5, 6, 2, (OutReq("a", 1, "stop"), OutReq("b", 0, "abort")))
    assert fast.finishes_and_sampled([none_finished, no_outs, done], StepUpdated, OutReq) == (
        [("a", 6), ("b", 6)], 4)
    # a sampled count Python sums differently (a float) or that leaves int64: tokens left to Python
    assert fast.finishes_and_sampled([StepUpdated(1, 2, 0, (OutReq("a", 1.5, "stop"),))], StepUpdated,
                                     OutReq) == ([("a", 2)], None)
    big = [StepUpdated(1, 2, 0, (OutReq("a", 2**62), OutReq("b", 2**62)))]
    assert fast.finishes_and_sampled(big, StepUpdated, OutReq) == ([], None)
    # what only Python judges (it raises, or reads attributes of another type): declined
    for odd in (StepUpdated(1, 2, 0, None), StepUpdated(1, 2, 0, [OutReq("a", 1)]),
                StepUpdated(1, 2, 0, (("a", 1, "stop"),)), StepScheduled(1, 2, 0)):
        assert fast.finishes_and_sampled([done, odd], StepUpdated, OutReq) is None


def test_tokens_counted_in_python_where_c_left_them(traces):
    """``_run_figures`` with tokens None sums them as it always did (the float case above)."""
    recorded = traces[0]
    t0 = recorded.index().start_ns
    adds = {"a": 0}
    finishes = [("a", t0 + 10**9)]
    assert fidelity._run_figures(recorded, adds, finishes, t0) == fidelity._run_figures(
        recorded, adds, finishes, t0, sum(o.sampled for r in recorded.of(StepUpdated) for o in r.outs))


@needs_compiled
def test_equal_batches_prefix_stops_where_python_must_look(traces):
    recorded, exact, _ = traces
    rs, ss = recorded.of(StepScheduled), exact.of(StepScheduled)
    n = fast.equal_batches_prefix(rs, ss, StepScheduled, SchedReq)
    assert n == fidelity._first_batch_mismatch(rs, ss) or n == min(len(rs), len(ss))
    assert fast.equal_batches_prefix([], ss, StepScheduled, SchedReq) == 0
    assert fast.equal_batches_prefix(rs[:7], ss, StepScheduled, SchedReq) == 7
    k = next(i for i, r in enumerate(ss) if len(r.reqs) > 1)
    at_k = lambda r: list(ss[:k]) + [r] + list(ss[k + 1:])  # noqa: E731
    s = ss[k]
    # another field than the composition's: still equal
    other = at_k(s._replace(reqs=tuple(q._replace(computed_tokens=q.computed_tokens + 1) for q in s.reqs)))
    assert fast.equal_batches_prefix(rs, other, StepScheduled, SchedReq) == n
    # stops at k: a real difference, or anything a plain comparison might not settle
    for changed in (s._replace(reqs=s.reqs[1:]), s._replace(step=s.step + 1),
                    s._replace(reqs=(s.reqs[0]._replace(prefill_tokens=s.reqs[0].prefill_tokens + 1),) + s.reqs[1:]),
                    s._replace(reqs=(s.reqs[0]._replace(cached_tokens=np.int64(0)),) + s.reqs[1:]),
                    s._replace(reqs=(tuple(s.reqs[0]),) + s.reqs[1:]), s._replace(reqs=list(s.reqs))):
        stop = fast.equal_batches_prefix(rs, at_k(changed), StepScheduled, SchedReq)
        assert stop == k, changed
    # and the Python loop then decides as before
    assert fidelity._first_batch_mismatch(rs, at_k(s._replace(reqs=s.reqs[1:]))) == k
    assert fidelity._first_batch_mismatch(rs, at_k(s._replace(reqs=list(s.reqs)))) is None
    # a plain value of another type compares as in Python: step 3.0 == 3
    assert fast.equal_batches_prefix(rs, at_k(s._replace(step=float(s.step))), StepScheduled, SchedReq) == n


@needs_compiled
def test_int64_column(traces):
    rs = traces[0].of(StepScheduled)
    assert np.array_equal(fast.int64_column(rs, 0), np.array([r.t_ns for r in rs], dtype=np.int64))
    assert fast.int64_column(rs, 0).dtype == np.int64 and len(fast.int64_column([], 0)) == 0
    for odd in (rs[0]._replace(t_ns=1.0), rs[0]._replace(t_ns=2**63), rs[0]._replace(t_ns=False), ()):
        assert fast.int64_column([rs[1], odd], 0) is None


def test_step_errs_numpy_equals_python_ints():
    """Where the numpy path applies, each error is the same double as Python's int / int; where it might not
    (times a double does not hold exactly), the Python list is returned."""
    rng = np.random.default_rng(0)
    rt = np.cumsum(rng.integers(1, 10**9, 500)).tolist()
    st = np.cumsum(rng.integers(1, 10**9, 480)).tolist()
    rt[7] = rt[6]  # a zero-length step: max(dr, 1)
    sched = lambda ts: [StepScheduled(t, t, i) for i, t in enumerate(ts)]  # noqa: E731
    reference = [abs((st[i + 1] - st[i]) - (rt[i + 1] - rt[i])) / max(rt[i + 1] - rt[i], 1)
                 for i in range(min(len(rt), len(st)) - 1)]
    got = fidelity._step_errs(sched(rt), sched(st))
    assert [repr(float(x)) for x in got] == [repr(x) for x in reference]
    huge = [t + 2**58 if i % 2 else t for i, t in enumerate(rt)]  # differences past 2**53
    assert type(fidelity._step_errs(sched(huge), sched(st))) is list
    assert fidelity._step_errs(sched(rt[:1]), sched(st)) == []


def _py_request_errs(rf, r_add, s_fin, s_add, r0) -> list:
    errs = []
    for rid, t in rf:
        if rid in s_fin and rid in r_add and rid in s_add:
            lat_r, lat_s = t - r0 - r_add[rid], s_fin[rid] - s_add[rid]
            errs.append(abs(lat_s - lat_r) / max(lat_r, 1))
    return errs


@needs_compiled
def test_request_errs_and_latencies_match_python_or_decline(traces):
    from tracesim.format.records import RequestAdded

    recorded, _, fitted = traces
    r0, s0 = recorded.index().start_ns, fitted.index().start_ns
    r_add = {r.req_id: r.t_ns - r0 for r in recorded.of(RequestAdded) if r.side == "engine"}
    s_add = {r.req_id: r.t_ns - s0 for r in fitted.of(RequestAdded) if r.side == "engine"}
    rf, sf = fidelity._finishes(recorded), fidelity._finishes(fitted)
    s_fin = {rid: t - s0 for rid, t in sf}
    got = fast.request_errs(rf, r_add, s_fin, s_add, r0)
    assert [repr(x) for x in got] == [repr(x) for x in _py_request_errs(rf, r_add, s_fin, s_add, r0)]
    assert any(got)
    for finishes, adds, t0 in ((rf, r_add, r0), (sf, s_add, s0)):
        assert [repr(x) for x in fast.latencies_ms(finishes, adds, t0)] == [
            repr((t - t0 - adds[rid]) / 1e6) for rid, t in finishes if rid in adds]
    # missing ids are skipped; a zero or negative latency divides by 1
    few = [("a", 10), ("gone", 5), ("b", 3)]
    adds, fins = {"a": 2, "b": 7, "gone": 0}, {"a": 9, "b": 2}
    assert fast.request_errs(few, adds, fins, {"a": 1, "b": 1}, 1) == _py_request_errs(
        few, adds, fins, {"a": 1, "b": 1}, 1) == [1 / 7, abs(1 - -5) / 1]
    assert fast.latencies_ms(few, {"a": 2}, 1) == [(10 - 1 - 2) / 1e6]
    assert fast.request_errs([], {}, {}, {}, 0) == [] == fast.latencies_ms([], {}, 0)
    # what only Python computes exactly as it does: declined
    for odd in ([(1, 10)], [("a", 10.0)], [("a", 2**63)], [("a", 10, 0)], [["a", 10]]):
        assert fast.request_errs(odd, {1: 0, "a": 0}, {1: 0, "a": 0}, {1: 0, "a": 0}, 0) is None
        assert fast.latencies_ms(odd, {1: 0, "a": 0}, 0) is None
    assert fast.request_errs([("a", 2**54)], {"a": 0}, {"a": 0}, {"a": 0}, 0) is None  # past 2**53
    assert fast.latencies_ms([("a", 2**54)], {"a": 0}, 0) is None
    assert fast.request_errs([("a", 5)], {"a": 0.5}, {"a": 0}, {"a": 0}, 0) is None
    assert fast.latencies_ms([("a", 5)], {"a": 1}, 1.0) is None
