"""No weight write overlaps a forward pass in flight."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from tracesim.check.base import NotCheckable, ms, ref, violation

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
    tree = _MaxTree([w[1] for w in windows])
    out, more = [], []
    for w in ix.weights:
        # the windows that start before the write ends and end after it starts, in start order, found in
        # O(log n) per window listed: a window spanning the run costs no scan per write
        hi = bisect_left(starts, w.end_ns)
        found = tree.above(hi, w.t_ns, MAX_LISTED + 1)
        if len(found) > MAX_LISTED:
            more.append((len(out) + MAX_LISTED, w, hi))
        for start, end, st in [windows[j] for j in found[:MAX_LISTED]]:
            if start < w.end_ns and end > w.t_ns:  # (true of every window found)
                rec = st.exec if source == "exec" else st.sched
                out.append(violation(
                    WRITE, f"the write of version {w.version} weights ({ms(ix, w.t_ns)}..{ms(ix, w.end_ns)}) "
                    f"overlaps step {st.sched.step}'s forward pass ({ms(ix, start)}..{ms(ix, end)}, from {source})",
                    step=st.sched.step, events=[ref(rec), ref(w)]))
    if more:  # writes overlapping more than MAX_LISTED forward passes: one more violation counts the rest
        counts = _count_above(tree.values, [(hi, w.t_ns) for _pos, w, hi in more])
        merged, done = [], 0
        for (pos, w, _hi), n in zip(more, counts):
            merged += out[done:pos]
            merged.append(violation(
                WRITE, f"the write of version {w.version} weights ({ms(ix, w.t_ns)}..{ms(ix, w.end_ns)}) overlaps "
                f"{n - MAX_LISTED:,} more forward passes (from {source}) than the {MAX_LISTED} listed",
                events=[ref(w)]))
            done = pos
        out = merged + out[done:]
    return out


MAX_LISTED = 32  # overlapping forward passes listed one by one per write; the rest are counted in one more


class _MaxTree:
    """The maximum of ``values`` over ranges (a segment tree): lists the positions below ``hi`` whose value
    exceeds a bound in O(log n) per position listed."""

    def __init__(self, values: list):
        self.values = values
        size = 1
        while size < len(values):
            size *= 2
        self.size = size
        tree = [None] * size + values + [None] * (size - len(values))
        for p in range(size - 1, 0, -1):
            a, b = tree[2 * p], tree[2 * p + 1]
            tree[p] = a if b is None or (a is not None and a >= b) else b
        self.tree = tree

    def above(self, hi: int, bound, limit: int) -> list:
        """Up to ``limit`` positions ``j < hi`` with ``values[j] > bound``, in increasing order."""
        tree, size, found = self.tree, self.size, []
        stack = [(1, 0, size)]  # node, its first position, its end position
        while stack and len(found) < limit:
            p, a, b = stack.pop()
            top = tree[p]
            if a >= hi or top is None or top <= bound:
                continue
            if p >= size:
                found.append(a)
                continue
            mid = (a + b) // 2
            stack.append((2 * p + 1, mid, b))
            stack.append((2 * p, a, mid))
        return found


def _count_above(values: list, queries: list) -> list:
    """For each ``(hi, bound)``: how many of ``values[:hi]`` exceed ``bound``. Offline, with a Fenwick tree over
    the ranks of the values: O((n + queries) log n)."""
    ranks = sorted(values)
    n = len(values)
    fenwick = [0] * (n + 1)
    answers = [0] * len(queries)
    inserted = 0
    for q in sorted(range(len(queries)), key=lambda q: queries[q][0]):
        hi, bound = queries[q]
        while inserted < hi:
            k = bisect_left(ranks, values[inserted]) + 1
            while k <= n:
                fenwick[k] += 1
                k += k & -k
            inserted += 1
        k, at_most = bisect_right(ranks, bound), 0  # how many of values[:hi] are <= bound
        while k > 0:
            at_most += fenwick[k]
            k -= k & -k
        answers[q] = hi - at_most
    return answers
