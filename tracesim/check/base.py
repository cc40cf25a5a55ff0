"""Helpers every invariant module uses: event references, "not checkable" results, step versions."""

from __future__ import annotations

from bisect import bisect_right

from tracesim.check.violation import EventRef, Violation


class NotCheckable(str):
    """A checker's answer when the trace lacks what the invariant needs: the text says what is missing."""


def ref(rec, req_id: str | None = None, step: int | None = None) -> EventRef:
    """An EventRef for any record; ``step`` and ``req_id`` default to the record's own fields."""
    if step is None:
        step = getattr(rec, "step", None)
    if req_id is None:
        req_id = getattr(rec, "req_id", None)
    return EventRef(rec.KIND, rec.t_ns, step, req_id)


def violation(invariant: str, message: str, req_id=None, step=None, events=(), cause=None,
              group_id=None) -> Violation:
    """A Violation whose ``t_ns`` is that of the last event named (the one that exposed the break).

    ``events``: the records that explain it, the cause first. ``cause``: the likely mechanism in one sentence
    that every violation with the same cause shares word for word (reports group by it)."""
    t_ns = events[-1].t_ns if events else None
    if step is None:
        step = next((e.step for e in reversed(events) if e.step is not None), None)
    return Violation(invariant, message, req_id, step, t_ns, tuple(events), cause, group_id)


INITIAL = "initial"  # stands for the weights before the first recorded update when no number is known


def step_versions(ix) -> dict:
    """``(proc, step) -> version`` of the weights each step's forward pass ran with.

    Sources, most direct first: ``StepExecuted.version``; ``StepUpdated.version`` (the version the engine
    stamped on the step's outputs); the weight-update timeline (the last ``WeightsUpdated`` whose label was set
    before the step was scheduled; before any update, the engine config's ``weight_version``, else the version
    before the first update when versions are numbers, else the earliest version the engine stamped, else
    ``INITIAL``).
    A step missing from the map has no known version. Computed once per index.
    """
    cached = ix.derived.get("step_versions")
    if cached is not None:
        return cached
    times, versions = [], []
    for w in sorted(ix.weights, key=lambda w: (w.set_ns if w.set_ns is not None else w.end_ns)):
        times.append(w.set_ns if w.set_ns is not None else w.end_ns)
        versions.append(w.version)
    initial = ix.header.engine_config.weight_version if ix.header else None
    if initial is None:
        # the weights before the first recorded update: the version before it, where versions are numbers;
        # else the version the engine stamped on its earliest step
        first = versions[0] if versions else None
        stamped = next((st.upd.version for st in ix.step_order if st.upd is not None and st.upd.version is not None),
                       None)
        initial = first - 1 if type(first) is int and first > 0 else stamped if stamped is not None else INITIAL
    result = {}
    for key, st in ix.steps.items():
        v = st.exec.version if st.exec is not None else None
        if v is None and st.upd is not None:
            v = st.upd.version
        if v is None and ix.weights:
            i = bisect_right(times, st.sched.t_ns)
            v = versions[i - 1] if i else initial
        if v is not None:
            result[key] = v
    ix.derived["step_versions"] = result
    return result


def produced_runs(ix, inc) -> list:
    """Version runs of an engine incarnation's output: ``[(version, start, end, step, upd record)]``.

    Positions count the output tokens applied to the incarnation in update order; a run's version is None when
    its step's version is unknown.
    """
    versions = step_versions(ix)
    runs, pos = [], 0
    proc = inc.proc
    for step, sampled, upd in inc.outs:
        v = versions.get((proc, step))
        if runs and runs[-1][0] == v:
            r = runs[-1]
            runs[-1] = (v, r[1], pos + sampled, r[3], r[4])
        else:
            runs.append((v, pos, pos + sampled, step, upd))
        pos += sampled
    return runs


def segments(c) -> list:
    """The client incarnations a continued sample (``ClientInc.continues``) was joined from, the first first,
    with the output positions each owns: ``[(inc, start, end)]``, ``end`` None for the last (``c``). A sample
    that continues nothing is ``[(c, 0, None)]``."""
    chain, seen, node = [], set(), c
    while node is not None and id(node) not in seen:  # a hostile trace may make a cycle
        seen.add(id(node))
        chain.append(node)
        node = node.continues
    chain.reverse()
    return [(seg, seg.carried, chain[i + 1].carried if i + 1 < len(chain) else None) for i, seg in enumerate(chain)]


def ms(ix, t_ns) -> str:
    """``t_ns`` as milliseconds since the trace started (its first record), as messages print times."""
    return f"{(t_ns - (ix.t0_ns or 0)) / 1e6:.3f} ms"
