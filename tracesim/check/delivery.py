"""The client sees each emitted token exactly once, at its position."""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ref, violation

ONCE = "tokens_delivered_exactly_once"


def tokens_delivered_exactly_once(ix, policy) -> list:
    """Per client incarnation: frames are contiguous (each ``start_idx`` equals the tokens delivered so far),
    nothing follows the final frame, and, where the engine side is recorded, the client received exactly the
    tokens the engine appended to the request (fewer is allowed only for an aborted request). A continuation's
    frames count from the tokens it carried (``SampleContinued``)."""
    if not ix.n_deliver:
        return NotCheckable("missing output deliveries (no OutputDelivered)")
    out = []
    for c in ix.client_order:
        if not c.frames:
            continue
        v = _frames(c)
        if v is None:
            v = _against_engine(c)
        if v is not None:
            out.append(v)
    return out


def _frames(c):
    """The first gap, overlap or frame after the end, as a violation; None when the frames are contiguous. A
    continuation's frames start after the tokens it carried."""
    expected, prev, final = c.carried, None, None
    for f in c.frames:
        if final is not None:
            return violation(ONCE, f"{c.req_id} received tokens {f.start_idx}..{f.start_idx + f.num_tokens} "
                             "after its final frame", c.req_id, events=[ref(final), ref(f)])
        if f.start_idx != expected:
            if f.start_idx > expected:
                what = f"tokens {expected}..{f.start_idx} were never delivered"
            else:
                what = f"tokens {f.start_idx}..{min(expected, f.start_idx + f.num_tokens)} were delivered again"
            events = ([ref(prev)] if prev is not None else []) + [ref(f)]
            return violation(ONCE, f"{c.req_id}'s frame starts at position {f.start_idx} after {expected} "
                             f"delivered tokens: {what}", c.req_id, events=events)
        expected = f.start_idx + f.num_tokens
        prev = f
        if f.finished:
            final = f
    return None


def _against_engine(c):
    e = c.engine
    if e is None or c.final is None:
        return None
    sampled = sum(n for _s, n, _u in e.outs)
    delivered = c.final.start_idx + c.final.num_tokens - c.carried  # a continuation's engine counts from 0
    aborted = c.final.finish_reason == "abort" or e.ended == "aborted" or bool(c.aborted)
    if delivered > sampled:
        what = f"{delivered - sampled} more token(s) than the engine produced"
    elif delivered < sampled and not aborted:
        what = f"{sampled - delivered} fewer token(s) than the engine produced"
    else:
        return None
    events = [ref(e.outs[-1][2], c.req_id, step=e.outs[-1][0])] if e.outs else []
    return violation(ONCE, f"{c.req_id} delivered {delivered} tokens to the client, {what} ({sampled})",
                     c.req_id, events=events + [ref(c.final)])
