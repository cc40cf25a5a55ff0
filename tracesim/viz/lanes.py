"""Per-request lanes (who produced which tokens when, by which version) and interval helpers for drawing.

A request's tokens are timed by the engine's ``StepUpdated`` outputs when the trace has them, otherwise by
the client's ``OutputDelivered`` frames. Their version is, in order of preference: the weight-version spans
the engine reported on delivery, the version stamped on the step's output, the label the client gave the
sample at admission, else unknown (``None``).
"""

from __future__ import annotations

import heapq

import numpy as np

from tracesim.format import Aborted, OutputDelivered, RequestAdded, StepScheduled, StepUpdated, Trace
from tracesim.viz.extract import RequestLane


def extract_requests(trace: Trace, t0_ns: int) -> dict:
    """``req_id -> RequestLane`` in order of first appearance, with ``segments`` filled in."""
    lanes: dict = {}
    produced: dict = {}  # req_id -> output tokens sampled so far (engine side)
    delivered: dict = {}  # req_id -> client-side production points

    def lane(req_id, t):
        found = lanes.get(req_id)
        if found is None:
            found = lanes[req_id] = RequestLane(req_id, None, float(t))
        return found

    for r in trace.records:
        t = type(r)
        if t is StepScheduled:
            for q in r.reqs:
                ln = lane(q.req_id, r.t_ns - t0_ns)
                if ln.first_sched != ln.first_sched:  # NaN: not scheduled before
                    ln.first_sched = float(r.t_ns - t0_ns)
        elif t is StepUpdated:
            _apply_update(r, t0_ns, lane, produced)
        elif t is OutputDelivered:
            ln = lane(r.req_id, r.t_ns - t0_ns)
            delivered.setdefault(r.req_id, []).append((float(r.t_ns - t0_ns), r.start_idx, r.num_tokens, None))
            if r.finished:
                ln.end = max(_or(ln.end, 0.0), float(r.t_ns - t0_ns))
                ln.finish_reason = ln.finish_reason or r.finish_reason
                ln.aborted = ln.aborted or r.finish_reason == "abort"
            if r.spans:
                ln.spans = r.spans
        elif t is RequestAdded:
            ln = lane(r.req_id, r.t_ns - t0_ns)
            ln.admitted = min(ln.admitted, float(r.t_ns - t0_ns))
            ln.group_id = ln.group_id or r.group_id
            if r.side == "client" and r.version is not None:
                ln.label_version = r.version
        elif t is Aborted:
            for req_id in r.req_ids:
                ln = lane(req_id, r.t_ns - t0_ns)
                ln.aborted = True
                if ln.end != ln.end:
                    ln.end = float(r.t_ns - t0_ns)
    for req_id, ln in lanes.items():
        if not ln.points:
            ln.points = delivered.get(req_id, [])
        ln.segments = _segments(ln)
    return lanes


def _or(value: float, default: float) -> float:
    return default if value != value else value


def _apply_update(r: StepUpdated, t0_ns: int, lane, produced: dict) -> None:
    t = float(r.end_ns - t0_ns)
    for o in r.outs:
        if o.stale:
            continue
        if o.sampled > 0:
            start = produced.get(o.req_id, 0)
            produced[o.req_id] = start + o.sampled
            lane(o.req_id, t).points.append((t, start, o.sampled, r.version))
        if o.finish_reason is not None:
            ln = lane(o.req_id, t)
            ln.end = t if ln.end != ln.end else ln.end
            ln.finish_reason = ln.finish_reason or o.finish_reason
            ln.aborted = ln.aborted or o.finish_reason == "abort"


def _version_at(ln: RequestLane, index: int, stamped):
    if ln.spans:
        for span in ln.spans:
            if span.start <= index < span.end:
                return span.version
    if stamped is not None:
        return stamped
    return ln.label_version


def _segments(ln: RequestLane) -> list:
    """Runs of equal version: [(start ns, end ns, version)]; the first starts when the request is scheduled."""
    segments: list = []
    start = _or(ln.first_sched, ln.admitted)
    for t, index, _count, stamped in ln.points:
        version = _version_at(ln, index, stamped)
        if segments and segments[-1][2] == version:
            segments[-1][1] = t
        else:
            begin = segments[-1][1] if segments else start
            segments.append([begin, t, version])
    if ln.end == ln.end:
        if segments and ln.end > segments[-1][1]:
            segments[-1][1] = ln.end
        elif not segments and ln.end > start:
            segments.append([start, ln.end, ln.label_version])
    return [tuple(s) for s in segments]


def lane_end(ln: RequestLane) -> float:
    """Last time a request was seen alive (admission at least)."""
    times = [ln.admitted, ln.first_sched, ln.end] + [seg[1] for seg in ln.segments[-1:]]
    return max(t for t in times if t == t)


def pack_rows(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Row index per interval such that intervals in one row never overlap; uses as few rows as possible.

    Rows are reused lowest-first so that a picture stays compact. ``starts``/``ends`` are equal-length
    arrays; an interval with NaN end is treated as ending at its start.
    """
    order = np.argsort(starts, kind="stable")
    rows = np.zeros(len(starts), dtype=np.int64)
    busy: list = []  # (end, row) of occupied rows
    free: list = []  # free row numbers (heap)
    next_row = 0
    for i in order:
        s, e = starts[i], ends[i]
        e = s if e != e else e
        while busy and busy[0][0] <= s:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            row = heapq.heappop(free)
        else:
            row, next_row = next_row, next_row + 1
        rows[i] = row
        heapq.heappush(busy, (e, row))
    return rows


def merge_close(starts: np.ndarray, ends: np.ndarray, min_gap: float) -> tuple:
    """Merge intervals whose gap is below ``min_gap`` (e.g. one pixel): the picture is the same, far cheaper.

    Returns ``(starts, ends)`` sorted by start. NaN intervals are dropped.
    """
    keep = ~(np.isnan(starts) | np.isnan(ends))
    s, e = starts[keep], ends[keep]
    if len(s) == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], np.maximum(e[order], s[order])
    reach = np.maximum.accumulate(e)
    new_group = np.ones(len(s), dtype=bool)
    new_group[1:] = s[1:] > reach[:-1] + min_gap
    group_ids = np.cumsum(new_group) - 1
    merged_end = np.full(group_ids[-1] + 1, -np.inf)
    np.maximum.at(merged_end, group_ids, e)
    return s[new_group], merged_end
