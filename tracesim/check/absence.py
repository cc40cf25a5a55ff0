"""What must exist: a reward before a sample is trained on, a final frame for every output the engine
finished, and on the client the very tokens the engine appended.

The other invariants judge records that contradict each other; these judge records that are missing where the
trace itself proves they should exist (the loop records rewards, later outputs of the same engine did reach
the client, the engine recorded its token ids), so a lost frame or a reward that never came is a violation and
not a silent pass.
"""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ms, ref, segments, violation
from tracesim.format.digest import prefix_digests

REWARDED = "reward_bound_before_consumption"
DELIVERED = "finished_output_delivered"
TOKENS = "client_tokens_match_engine"


def reward_bound_before_consumption(ix, policy) -> list:
    """Where the loop records rewards at all: every consumed sample had a reward bound to it before the trainer
    consumed it (``reward_bound_to_own_tokens`` then says whether that reward scored its final tokens)."""
    if not ix.consumes:
        return NotCheckable("missing trainer consumption records (no TrainerConsumed)")
    if not ix.rewards:
        return NotCheckable("missing reward records (no RewardBound): the loop does not record its rewards")
    out = []
    for c in ix.client_order:
        if not c.consumed:
            continue
        first = min(c.rewards, key=lambda r: r.t_ns) if c.rewards else None  # the earliest reward, once per sample
        for tc, s in c.consumed:
            if first is not None and first.t_ns <= tc.t_ns:
                continue
            later = first
            if later is not None:
                when = (f"its reward was bound only at {ms(ix, later.t_ns)}, "
                        f"{(later.t_ns - tc.t_ns) / 1e6:.3f} ms later")
                events = [ref(tc, s.req_id), ref(later)]
            else:
                when = "no reward was ever bound to it"
                events = [ref(tc, s.req_id)]
            if c.final is not None:
                events.insert(0, ref(c.final))
            out.append(violation(REWARDED, f"train step {tc.train_step} consumed {s.req_id} at {ms(ix, tc.t_ns)}, "
                                 f"but {when}", s.req_id, events=events))
    return out


def _finish_step(e):
    """The engine step whose update finished incarnation ``e`` (None when it did not finish in a step)."""
    if e.ended != "finished" or e.end_rec is None:
        return None
    return getattr(e.end_rec, "step", None)


def finished_output_delivered(ix, policy) -> list:
    """Every sample whose engine incarnation finished reaches the client with a final frame, where the trace
    proves it should have: the client used the sample (a reward, a consumption) without it, or the client
    admitted it and the trace covers the run to its end (``samples_must_end``, the default; a recording cut off
    mid-run sets it false). Frames of different requests may reach the client in any order (each has its own
    stream), so a later output that did arrive proves nothing. A sample the client aborted or dropped is exempt."""
    if not ix.n_deliver:
        return NotCheckable("missing output deliveries (no OutputDelivered)")
    if not ix.steps:
        return NotCheckable("missing engine steps (no sched records)")
    out = []
    for c in ix.client_order:
        e = c.engine
        step = _finish_step(e) if e is not None else None
        if step is None or c.final is not None or c.dropped or any(a.side == "client" for a in c.aborted):
            continue
        used = c.rewards or c.consumed
        if not used and not (policy.samples_must_end and c.add is not None):
            continue
        events = [ref(e.end_rec, c.req_id, step=step)]
        if used:
            first_use = c.rewards[0] if c.rewards else c.consumed[0][0]
            why = f"the client used it ({first_use.KIND} at {ms(ix, first_use.t_ns)}) without its final output"
            events.append(ref(first_use, c.req_id))
        else:
            why = "the trace covers the run to its end (policy samples_must_end), so the output was lost"
            events.insert(0, ref(c.add))
        out.append(violation(DELIVERED, f"the engine finished {c.req_id} at step {step} ({ms(ix, e.end_rec.t_ns)}) "
                             f"but no final frame reached the client: {why}", c.req_id, step, events))
    return out


def _engine_tokens(ix, e):
    """The ids the engine appended to incarnation ``e``, in order; None when one of its frames lacks them."""
    by_upd = ix.derived.setdefault("outs_by_req", {})  # id(StepUpdated) -> {req_id: OutReq}, built once each
    ids: list = []
    for _step, sampled, upd in e.outs:
        outs = by_upd.get(id(upd))
        if outs is None:
            outs = by_upd[id(upd)] = {o.req_id: o for o in upd.outs}
        o = outs.get(e.req_id)
        if o is None or o.token_ids is None or len(o.token_ids) != sampled:
            return None
        ids.extend(o.token_ids)
    return ids


def _joined_tokens(ix, c):
    """The ids of a continued sample: each segment's engine tokens up to where the next one took over."""
    ids: list = []
    for seg, start, end in segments(c):
        own = _engine_tokens(ix, seg.engine) if seg.engine is not None else None
        if own is None or len(ids) != start:
            return None
        ids.extend(own if end is None else own[:end - start])
    return ids


def client_tokens_match_engine(ix, policy) -> list:
    """Where the engine recorded its sampled token ids (``OutReq.token_ids``): every frame the client received
    carries the digest of exactly the tokens the engine appended up to its end (``OutputDelivered.digest`` is
    that of all output tokens so far), per incarnation (a continuation's: of the whole sample), so a token changed, lost or invented between the
    engine and the client is caught at the first frame it shows in."""
    if not ix.n_deliver:
        return NotCheckable("missing output deliveries (no OutputDelivered)")
    out, compared = [], 0
    for c in ix.client_order:
        e = c.engine
        if e is None or not e.outs or not any(f.digest is not None for f in c.frames):
            continue
        ids = _engine_tokens(ix, e) if c.continues is None else _joined_tokens(ix, c)
        if ids is None:
            continue
        compared += 1
        # frames beyond the tokens the engine appended are tokens_delivered_exactly_once's to report
        frames = [f for f in c.frames if f.digest is not None and f.start_idx + f.num_tokens <= len(ids)]
        for f, digest in zip(frames, prefix_digests(ids, [f.start_idx + f.num_tokens for f in frames])):
            end = f.start_idx + f.num_tokens
            if digest != f.digest:
                pos, run = _first_step_of(e, f)
                out.append(violation(
                    TOKENS, f"the frame of {c.req_id} delivered at {ms(ix, f.t_ns)} (tokens {f.start_idx}..{end}) "
                    f"carries digest {f.digest}, but the engine appended other tokens up to there"
                    + (f" (the frame begins with the output of step {run})" if run is not None else ""),
                    c.req_id, run, ([ref(pos, c.req_id, step=run)] if pos is not None else []) + [ref(f)]))
                break
    if not compared:
        return NotCheckable("missing token ids on the engine side (OutReq.token_ids: record with --record-tokens) "
                            "or frame digests on the client side")
    return out


def _first_step_of(e, frame):
    """(StepUpdated, step) that produced the first token of ``frame``, or (None, None)."""
    pos = 0
    for step, sampled, upd in e.outs:
        if pos + sampled > frame.start_idx:
            return upd, step
        pos += sampled
    return None, None
