"""Request lifecycles: each engine-side incarnation of a request, from its add to its finish or abort.

Built once per trace by ``TraceIndex.lifecycles`` (format/index.py) for the readers that ask what became of
a request (``tracesim info``, checks, plots). The rules are the checkers' (check/index.py), so both tell
the same story:

* an engine-side ``RequestAdded`` opens an incarnation; a request scheduled before any add gets a placeholder
  (``add`` None), which its add then replaces (keeping its schedules), unless it already sampled tokens or
  ended;
* only the schedule and the update the trace index took for a step count (a repeated record changes nothing);
* an update's output with a finish reason ends the current incarnation (``"abort"``: aborted, else finished),
  as does an engine-side ``Aborted``; the first end wins.
"""

from __future__ import annotations

from itertools import compress, repeat

from tracesim.format.records import Aborted, RequestAdded, StepScheduled, StepUpdated


class Lifecycle:
    """One engine-side incarnation of a request."""

    __slots__ = ("req_id", "proc", "add", "first_sched", "preempted", "sampled", "ended", "end_rec")

    def __init__(self, req_id: str, proc: int, add=None, first_sched=None):
        self.req_id, self.proc = req_id, proc
        self.add = add  # its engine-side RequestAdded; None: scheduled before (or without) one
        self.first_sched = first_sched  # the StepScheduled that first put it in a batch
        self.preempted: list = []  # the StepScheduled records that preempted it, in order
        self.sampled = 0  # output tokens its updates appended
        self.ended: str | None = None  # "finished" or "aborted"; None: live when the trace ends
        self.end_rec = None  # the StepUpdated or Aborted that ended it

    def __repr__(self) -> str:
        return (f"Lifecycle({self.req_id!r}, added={self.add is not None}, scheduled={self.first_sched is not None}, "
                f"preempted={len(self.preempted)}, sampled={self.sampled}, ended={self.ended})")


_KINDS = frozenset((RequestAdded, StepScheduled, StepUpdated, Aborted))


def request_lifecycles(records, procs, steps: dict) -> dict:
    """``req_id -> [Lifecycle, ...]`` in order of first sight. ``steps``: the trace index's ``(proc, step) ->
    Step``, whose taken records are the only schedules and updates that count. Never raises on odd content."""
    out: dict = {}
    get = out.get
    done_sched: set = set()  # keys whose taken schedule / update was applied
    done_upd: set = set()

    # Only the four kinds reach the Python loop: the filter runs in C (a trace is mostly output frames).
    for proc, rec in compress(zip(procs or repeat(0), records), map(_KINDS.__contains__, map(type, records))):
        kind = type(rec)
        if kind is RequestAdded:
            if rec.side == "client":
                continue
            inc = Lifecycle(rec.req_id, proc, rec)
            incs = get(rec.req_id)
            if incs is None:
                out[rec.req_id] = [inc]
            elif incs[-1].add is None and not incs[-1].sampled and incs[-1].ended is None:
                # the placeholder of a schedule seen before the add (merged clocks): the add takes its place
                # and keeps what the placeholder saw
                inc.first_sched, inc.preempted = incs[-1].first_sched, incs[-1].preempted
                incs[-1] = inc
            else:
                incs.append(inc)
        elif kind is StepScheduled:
            key = (proc, rec.step)
            st = steps.get(key)
            if st is None or st.sched is not rec or key in done_sched:  # (one record object can stand twice)
                continue
            done_sched.add(key)
            for q in rec.reqs:  # millions on a long trace: inline
                incs = get(q.req_id)
                if incs is None:
                    out[q.req_id] = [Lifecycle(q.req_id, proc, None, rec)]
                elif incs[-1].first_sched is None:
                    incs[-1].first_sched = rec
            for req_id in rec.preempted:
                incs = get(req_id)
                if incs is not None:
                    incs[-1].preempted.append(rec)
        elif kind is StepUpdated:
            key = (proc, rec.step)
            st = steps.get(key)
            if st is None or st.upd is not rec or key in done_upd:
                continue
            done_upd.add(key)
            for o in rec.outs:
                incs = get(o.req_id)
                if incs is None:
                    continue
                inc = incs[-1]
                if o.sampled > 0:
                    inc.sampled += o.sampled
                if o.finish_reason is not None and inc.ended is None:
                    inc.ended, inc.end_rec = ("aborted" if o.finish_reason == "abort" else "finished"), rec
        elif rec.side != "client":  # Aborted: a client's abort ends nothing until the engine's own record
            for req_id in rec.req_ids:
                incs = get(req_id)
                if incs is not None and incs[-1].ended is None:
                    incs[-1].ended, incs[-1].end_rec = "aborted", rec
    return out


__all__ = ["Lifecycle", "request_lifecycles"]
