"""A pause keeps its samples: no sample in flight when a pause began is aborted or dropped before the resume.

Only judged when the policy states it (``pause_keeps_samples = true``): loops that pause in ``wait`` or ``keep``
mode and never resubmit rely on it (a sample lost there silently shrinks a group or a batch). An abort-mode pause
aborts on purpose, so the default policy waives the invariant. The window of a pause runs from the pause's
``t_ns`` up to (not including) the first ``Resumed`` of the same side after it (the trace's end if none): what the
loop does once it resumed (dropping groups its staleness bound rejects, say) is its own policy, not the pause's.
Aborts of either side and client drops count.
"""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ms, ref, violation

PAUSE = "pause_keeps_samples"


def pause_keeps_samples(ix, policy) -> list:
    """See the module docstring."""
    if not ix.pauses:
        return NotCheckable("missing pauses (no Paused records)")
    windows = _windows(ix)
    out, seen = [], set()
    for c in ix.client_order:
        for rec, what in [(a, "aborted") for a in c.aborted] + [(d, "dropped") for d in c.dropped]:
            pause = _pause_at(windows, rec.t_ns)
            if pause is None or c.req_id in seen or (c.add is not None and c.add.t_ns > rec.t_ns):
                continue
            seen.add(c.req_id)
            out.append(_violation(ix, c.req_id, pause, rec, what))
    for req_id, incs in ix.engine.items():
        for inc in incs:
            rec = inc.end_rec
            if inc.ended != "aborted" or inc.client is not None or rec is None or req_id in seen:
                continue
            pause = _pause_at(windows, rec.t_ns)
            if pause is not None:
                seen.add(req_id)
                out.append(_violation(ix, req_id, pause, rec, "aborted"))
    return out


def _windows(ix) -> list:
    """``(start_ns, end_ns, Paused)`` of every pause, client pauses first (what the loop asked for)."""
    pauses = [p for p in ix.pauses if p.side == "client"] or list(ix.pauses)
    out = []
    for p in pauses:
        resume = min((r.t_ns for r in ix.resumes if r.side == p.side and r.t_ns >= p.t_ns), default=None)
        out.append((p.t_ns, resume if resume is not None else float("inf"), p))
    return out


def _pause_at(windows: list, t_ns: int):
    return next((p for start, end, p in windows if start <= t_ns < end), None)


def _violation(ix, req_id: str, pause, rec, what: str):
    mode = pause.mode or "unknown"
    cause = ("the pause was in abort mode, which aborts every request in flight" if mode == "abort"
             else f"the sample was {what} while the engine was paused ({mode} mode)")
    return violation(PAUSE, f"{req_id} was {what} at {ms(ix, rec.t_ns)} during the pause that began at "
                     f"{ms(ix, pause.t_ns)} ({mode} mode); the policy states that a pause keeps its samples "
                     "(pause_keeps_samples = true)", req_id, None, [ref(pause), ref(rec, req_id)], cause)
