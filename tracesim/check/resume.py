"""A resumed request's context is its prompt plus the tokens it emitted.

A preempted request loses its KV and is resumed by recomputing its whole context. vLLM rebuilds that context
from the request's token list, so the chunk that samples its next token feeds exactly ``prompt_len`` plus
every token the engine gave it before the resume (``SchedReq.computed_tokens`` plus the tokens scheduled in
that chunk). A context short of that resamples positions the client already holds (the sample's tokens no
longer follow from one another); a longer one feeds tokens the request never emitted.
"""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ref, violation

RESUMED = "resumed_context_complete"


def resumed_context_complete(ix, policy) -> list:
    """For every resume (``SchedReq.resumed``) that samples again: the context fed when it sampled equals the
    engine ``RequestAdded.prompt_len`` plus the tokens its updates gave it before the resume was scheduled."""
    if not ix.steps:
        return NotCheckable("missing engine steps (no sched records)")
    out = []
    for inc, sched, q, emitted, sampled_sched, q2, fed, upd in ix.resume_faults:
        prompt_len = inc.add.prompt_len
        short = prompt_len + emitted - fed
        what = (f"lacks {short} of the {emitted} token(s) it emitted" if short > 0
                else f"holds {-short} token(s) more than its prompt and the {emitted} it emitted")
        msg = (f"{inc.req_id} resumed at step {sched.step} with a context that {what}: step {sampled_sched.step} "
               f"fed it up to position {fed}, expected {prompt_len} + {emitted}")
        events = [ref(inc.add), ref(sched, inc.req_id)]
        if sampled_sched is not sched:
            events.append(ref(sampled_sched, inc.req_id))
        events.append(ref(upd, inc.req_id))
        out.append(violation(RESUMED, msg, req_id=inc.req_id, step=sched.step, events=events,
                             cause="a resumed request was rebuilt with a context that differs from its prompt plus "
                                   "its emitted tokens"))
    return out
