"""Exact replay's step costs (``steptime.step_table``, looked up by ``timing.RecordedTiming``) are numpy arrays
by step, built without a dict per column; they must give every step the cost the per-step definition gives
(``_reference``: the loop over dicts they replaced), on real recordings and on step numbers that are sparse,
negative, or missing an execution or an update."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tracesim.format import read_trace
from tracesim.format.records import SchedReq, StepExecuted, StepScheduled, StepUpdated
from tracesim.sim.steptime import MISSING, costs_of_steps, step_table
from tracesim.sim.timing import RecordedTiming

TRACES = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.msgpack"))


def _reference(scheds, upds, execs, t0):
    """(exec_ns, sched_ns, upd_ns, gaps) by the definition, a step at a time."""
    exec_ns, prev_done = {}, None
    for k in sorted(scheds):
        s, u = scheds[k], upds.get(k)
        if k in execs:
            exec_ns[k] = execs[k].end_ns - execs[k].t_ns
        elif u is not None:
            start = s.end_ns if prev_done is None else max(s.end_ns, prev_done)
            exec_ns[k] = max(0, u.t_ns - start)
        prev_done = u.t_ns if u is not None else prev_done
    actions = sorted([(r.t_ns, 0, k, r.end_ns) for k, r in scheds.items()]
                     + [(r.t_ns, 1, k, r.end_ns) for k, r in upds.items()])
    gaps, previous_end = {"sched": {}, "upd": {}}, t0
    for t, kind, k, end in actions:
        gaps["upd" if kind else "sched"][k] = max(0, t - previous_end)
        previous_end = end
    return (exec_ns, {k: r.end_ns - r.t_ns for k, r in scheds.items()},
            {k: r.end_ns - r.t_ns for k, r in upds.items()}, gaps)


class _Fallback:
    def exec_ns(self, step, reqs):
        return "fallback"

    def sched_ns(self, step):
        return "fallback"

    def upd_ns(self, step):
        return "fallback"

    def gap_ns(self, kind, step):
        return "fallback"


def _assert_table_matches(scheds, upds, execs, t0):
    exec_ns, sched_ns, upd_ns, gaps = _reference(scheds, upds, execs, t0)
    costs = costs_of_steps(scheds, upds, execs, t0)
    assert (costs.exec_ns, costs.sched_ns, costs.upd_ns, costs.gaps) == (exec_ns, sched_ns, upd_ns, gaps)
    timing = RecordedTiming(step_table(scheds, upds, execs, t0), _Fallback())
    steps = set(scheds) | set(upds) | set(execs)
    probe = steps | {min(steps, default=0) - 1, max(steps, default=0) + 1, max(steps, default=0) + 10 ** 6}
    for k in sorted(probe):
        assert timing.exec_ns(k, ()) == exec_ns.get(k, "fallback")
        assert timing.sched_ns(k) == sched_ns.get(k, "fallback")
        assert timing.upd_ns(k) == upd_ns.get(k, "fallback")
        assert timing.gap_ns("sched", k) == gaps["sched"].get(k, "fallback")
        assert timing.gap_ns("upd", k) == gaps["upd"].get(k, "fallback")
        assert all(type(v) is int for v in (timing.sched_ns(k), timing.gap_ns("sched", k)) if v != "fallback")


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.stem)
def test_the_table_of_a_recording_gives_every_step_its_defined_cost(path):
    trace = read_trace(path)
    ix = trace.index()
    _proc, scheds, execs, upds = ix.engine_steps()
    assert scheds
    _assert_table_matches(scheds, upds, execs, ix.start_ns)


@pytest.mark.parametrize("spacing", [1, 7, 100_000])  # dense, sparse enough for rows, and negative steps too
def test_the_table_of_odd_step_numbers_gives_every_step_its_defined_cost(spacing):
    rng = random.Random(spacing)
    scheds, upds, execs = {}, {}, {}
    t = 1_000
    for i in range(300):
        k = (i - 40) * spacing
        t += rng.randrange(0, 50)
        scheds[k] = StepScheduled(t_ns=t, end_ns=t + rng.randrange(0, 20), step=k,
                                  reqs=(SchedReq(req_id="a", prefill_tokens=0, decode_tokens=1),))
        if rng.random() < 0.6:  # some steps have no recorded forward pass, some no update
            execs[k] = StepExecuted(t_ns=t + 5, end_ns=t + 5 + rng.randrange(0, 90), step=k)
        if rng.random() < 0.8:
            t += rng.randrange(0, 80)  # ties and overlaps with the next schedule happen
            upds[k] = StepUpdated(t_ns=t, end_ns=t + rng.randrange(0, 10), step=k, outs=())
    lone = 262 * spacing
    execs[lone] = StepExecuted(t_ns=t + 1, end_ns=t + 9, step=lone)  # executed, never scheduled
    _assert_table_matches(scheds, upds, execs, 900)
    table = step_table(scheds, upds, execs, 900)
    assert (table.rows is None) == (spacing < 100_000)
    assert table.sched_ns.dtype.kind == "i" and (table.exec_ns == MISSING).any()


def test_an_empty_table_falls_back_for_every_step():
    _assert_table_matches({}, {}, {}, 0)
