"""Engine-side invariants: steps are well formed, and an output frame lands on the incarnation that
scheduled it."""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ref, violation

STEPS = "steps_well_formed"
FRAMES = "output_applies_to_scheduling_incarnation"


# Step faults found by the index (check/index.py) -> message. {step}: the faulty record's step; {other}: the
# step it came after; {expected}: the step that should have come.
_STEP_FAULTS = {
    "sched_order": "step {step} was scheduled right after step {other} (expected step {expected})",
    "sched_twice": "step {step} was scheduled twice",
    "upd_order": "the output of step {step} was applied after that of step {other}",
    "upd_twice": "the output of step {step} was applied twice",
    "upd_unscheduled": "the output of step {step} was applied but the step was never scheduled",
    "exec_twice": "step {step} was executed twice, or after its output was applied",
    "exec_unscheduled": "step {step} was executed but never scheduled",
    "upd_missing": "step {step} was scheduled but its output was never applied (step {other}'s was)",
}


def steps_well_formed(ix, policy) -> list:
    """Per engine process: steps are scheduled once each in order 0, 1, 2, ...; every execution and update
    follows its schedule, happens once, and updates come in step order; every scheduled step is updated,
    except the last ones still in flight when the trace ends (``Index.in_flight_at_end``, reported as a note:
    the recording stopped or the engine died there)."""
    if not ix.steps and not ix.n_upd and not ix.n_exec:
        return NotCheckable("missing engine steps (no sched records)")
    out = []
    for fault in ix.step_faults:
        code, st, rec = fault[0], fault[1], fault[2]
        events = ([ref(st.sched)] if st is not None else []) + [ref(rec)]
        other = fault[3] if len(fault) > 3 else None
        msg = _STEP_FAULTS[code].format(step=rec.step, other=other,
                                        expected=None if other is None else other + 1)
        out.append(violation(STEPS, msg, step=rec.step, events=events))
    return out


def output_applies_to_scheduling_incarnation(ix, policy) -> list:
    """An applied output frame with tokens for request r at step s: r was in step s's batch, and between
    schedule(s) and update(s) r was not aborted, its id was not added again, and no effective cache reset
    preempted the running requests (those resume and resample the position, so the old frame is void). A
    plain preemption does not void the frame: the token was sampled from valid KV and vLLM delivers it."""
    if not ix.n_upd:
        return NotCheckable("missing step updates (no upd records)")
    out = []
    for code, st, upd, o, inc, reset in ix.frame_faults:
        events = [ref(st.sched, o.req_id), ref(upd, o.req_id)]
        if code == "unscheduled":
            msg = (f"step {upd.step}'s output gave {o.sampled} token(s) to {o.req_id}, which step {upd.step} "
                   "did not schedule")
        else:
            cur = ix.engine[o.req_id][-1]
            if code == "reset":
                what = "a cache reset preempted it"
                events.insert(1, ref(reset, o.req_id))
            elif cur is not inc:
                what = f"{o.req_id} was added again under the same id (the frame landed on the new request)"
                if cur.add is not None:
                    events.insert(1, ref(cur.add))
            else:
                what = "it was aborted"
                if cur.end_rec is not None:
                    events.insert(1, ref(cur.end_rec, o.req_id))
            msg = (f"step {upd.step}'s output for {o.req_id} ({o.sampled} token(s)) was applied although {what} "
                   "after the step was scheduled")
        out.append(violation(FRAMES, msg, req_id=o.req_id, step=upd.step, events=events))
    return out
