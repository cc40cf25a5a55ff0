"""No weight write overlaps a forward pass in flight."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from tracesim.check.base import NotCheckable, ref, violation

WRITE = "no_weight_write_during_forward"


def forward_windows(ix) -> tuple:
    """``(windows, source)``: ``[(start_ns, end_ns, Step)]`` of every forward pass and where they come from.

    With ``StepExecuted`` records, a window is the execution itself. Without, it is the step's in-flight
    window: from ``schedule()`` returning (``sched.end_ns``; the batch exists only then) to
    ``update_from_output()`` being entered (``upd.t_ns``; the output exists by then). That window contains
    the forward pass, so it can only over-report, and an engine paused for the write has no step in flight.
    """
    windows, from_exec = [], ix.n_exec > 0
    for st in ix.step_order:
        if st.exec is not None:
            windows.append((st.exec.t_ns, st.exec.end_ns, st))
        elif not from_exec and st.upd is not None:
            windows.append((st.sched.end_ns, st.upd.t_ns, st))
    return windows, ("exec" if from_exec else "sched..upd")


def no_weight_write_during_forward(ix, policy) -> list:
    """No ``WeightsUpdated`` interval [t_ns, end_ns] intersects a forward window (see ``forward_windows``)."""
    if not ix.steps:
        return NotCheckable("missing engine steps (no sched records)")
    if not ix.weights and not ix.has_client:
        return NotCheckable("missing weight updates (the trace has no client side to record them)")
    windows, source = forward_windows(ix)
    if not windows:
        return NotCheckable("missing forward-pass windows (no exec records, no updated steps)")
    if not ix.weights:
        return []
    windows.sort(key=lambda w: w[0])
    starts = [w[0] for w in windows]
    longest = max(w[1] - w[0] for w in windows)
    out = []
    for w in ix.weights:
        # windows starting in [w.t_ns - longest, w.end_ns) are the only ones that can intersect the write
        lo, hi = bisect_left(starts, w.t_ns - longest), bisect_right(starts, w.end_ns)
        for start, end, st in windows[lo:hi]:
            if start < w.end_ns and end > w.t_ns:
                rec = st.exec if source == "exec" else st.sched
                out.append(violation(
                    WRITE, f"the write of version {w.version} weights ({w.t_ns}..{w.end_ns} ns) overlaps step "
                    f"{st.sched.step}'s forward pass ({start}..{end} ns, from {source})",
                    step=st.sched.step, events=[ref(rec), ref(w)]))
    return out
