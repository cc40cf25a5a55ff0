"""What the pictures need, pulled out of a trace once: step intervals, request lanes, pauses, weight writes.

Every time here is float ns relative to ``t0_ns`` (the earliest time in the trace), so recorded traces
(monotonic clock, huge values) and simulated ones (virtual ns from 0) plot the same way. Missing values
are NaN. Nothing here draws; ``timeline.py``, ``batches.py`` and ``chrome.py`` read these views.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from tracesim.format import Paused, Resumed, Trace, WeightsUpdated, read_trace


def as_trace(trace) -> Trace:
    """Accept a ``Trace`` or a path to one; raises ``TraceFormatError`` for unreadable files."""
    if isinstance(trace, Trace):
        return trace
    if isinstance(trace, (str, os.PathLike)):
        return read_trace(trace)
    raise TypeError(f"expected a Trace or a path, got {type(trace).__name__}")


def time_origin_ns(trace: Trace) -> int:
    """Earliest ``t_ns`` in the trace (0 for an empty one): the zero of every plotted time axis (the trace
    index's ``start_ns``)."""
    return trace.index().start_ns


@dataclass
class Steps:
    """One row per scheduled engine step, sorted by (proc, step). Times: ns since ``t0_ns``."""

    proc: np.ndarray
    step: np.ndarray
    sched_start: np.ndarray
    sched_end: np.ndarray
    exec_start: np.ndarray  # NaN where the forward pass was not recorded
    exec_end: np.ndarray
    upd_start: np.ndarray  # NaN where the step's output was never applied
    upd_end: np.ndarray
    prefill_tokens: np.ndarray
    decode_tokens: np.ndarray
    num_reqs: np.ndarray
    waiting: np.ndarray
    running: np.ndarray
    queue_depth: np.ndarray
    preempted: np.ndarray  # requests preempted by this schedule

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class Pauses:
    """Pause intervals and weight writes. Arrays of ns since ``t0_ns``; ``side`` per pause."""

    start: np.ndarray
    end: np.ndarray
    side: list
    mode: list
    write_start: np.ndarray
    write_end: np.ndarray
    write_version: np.ndarray


@dataclass
class RequestLane:
    """One request's life: admitted -> first scheduled -> tokens produced (by version) -> end."""

    req_id: str
    group_id: str | None
    admitted: float
    first_sched: float = np.nan
    end: float = np.nan
    finish_reason: str | None = None
    aborted: bool = False
    label_version: int | None = None  # version the client labelled the sample with at admission
    # production points: (ns, first output index, count, engine-stamped version or None)
    points: list = field(default_factory=list)
    spans: tuple | None = None  # VersionSpans the engine reported (final delivery)
    segments: list = field(default_factory=list)  # (start ns, end ns, version or None), filled by finish()


def extract_steps(trace: Trace, t0_ns: int) -> Steps:
    """Engine steps of every engine process; execute/update matched to their schedule by (proc, step) by the
    trace's index (the last record of each kind where a trace repeats one)."""
    sched, execs, upds = trace.index().last_records()
    keys = sorted(sched)
    n = len(keys)
    cols = {name: np.full(n, np.nan) for name in ("exec_start", "exec_end", "upd_start", "upd_end")}
    ints = {name: np.zeros(n, dtype=np.int64) for name in (
        "proc", "step", "prefill_tokens", "decode_tokens", "num_reqs", "waiting", "running", "queue_depth",
        "preempted")}
    sched_start, sched_end = np.empty(n), np.empty(n)
    for i, key in enumerate(keys):
        s = sched[key]
        ints["proc"][i], ints["step"][i] = key
        sched_start[i], sched_end[i] = s.t_ns - t0_ns, s.end_ns - t0_ns
        ints["prefill_tokens"][i] = sum(q.prefill_tokens for q in s.reqs)
        ints["decode_tokens"][i] = sum(q.decode_tokens for q in s.reqs)
        ints["num_reqs"][i] = len(s.reqs)
        ints["waiting"][i], ints["running"][i], ints["queue_depth"][i] = s.waiting, s.running, s.queue_depth
        ints["preempted"][i] = len(s.preempted)
        e = execs.get(key)
        if e is not None:
            cols["exec_start"][i], cols["exec_end"][i] = e.t_ns - t0_ns, e.end_ns - t0_ns
        u = upds.get(key)
        if u is not None:
            cols["upd_start"][i], cols["upd_end"][i] = u.t_ns - t0_ns, u.end_ns - t0_ns
    return Steps(sched_start=sched_start, sched_end=sched_end, **cols, **ints)


def extract_pauses(trace: Trace, t0_ns: int, end_ns: float) -> Pauses:
    """Pauses per side (from Paused to the next Resumed of that side, else its end_ns, else the trace end)."""
    open_pause: dict = {}
    spans: list = []
    writes: list = []
    for r in trace.records:
        t = type(r)
        if t is Paused:
            if r.side not in open_pause:
                open_pause[r.side] = r
        elif t is Resumed and r.side in open_pause:
            p = open_pause.pop(r.side)
            spans.append((p.t_ns - t0_ns, r.t_ns - t0_ns, p.side, p.mode))
        elif t is WeightsUpdated:
            writes.append((r.t_ns - t0_ns, r.end_ns - t0_ns, r.version))
    for p in open_pause.values():
        stop = (p.end_ns - t0_ns) if p.end_ns is not None else end_ns
        spans.append((p.t_ns - t0_ns, stop, p.side, p.mode))
    spans.sort(key=lambda s: s[0])
    return Pauses(
        start=np.array([s[0] for s in spans], dtype=float), end=np.array([s[1] for s in spans], dtype=float),
        side=[s[2] for s in spans], mode=[s[3] for s in spans],
        write_start=np.array([w[0] for w in writes], dtype=float),
        write_end=np.array([w[1] for w in writes], dtype=float),
        write_version=np.array([w[2] for w in writes], dtype=np.int64))


def trace_end_ns(trace: Trace, t0_ns: int) -> float:
    """Latest time in the trace (ends of spans included), relative to ``t0_ns``."""
    latest = t0_ns
    for r in trace.records:
        end = getattr(r, "end_ns", None)
        latest = max(latest, r.t_ns, end if end is not None else r.t_ns)
    return float(latest - t0_ns)


class TraceView:
    """Everything a picture of one trace needs, computed on first use and kept (a trace is immutable here)."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.t0_ns = time_origin_ns(trace)
        self.end_ns = trace_end_ns(trace, self.t0_ns)
        self._steps = self._pauses = self._requests = None

    @property
    def steps(self) -> Steps:
        if self._steps is None:
            self._steps = extract_steps(self.trace, self.t0_ns)
        return self._steps

    @property
    def pauses(self) -> Pauses:
        if self._pauses is None:
            self._pauses = extract_pauses(self.trace, self.t0_ns, self.end_ns)
        return self._pauses

    @property
    def requests(self) -> dict:
        if self._requests is None:
            from tracesim.viz.lanes import extract_requests  # lanes imports RequestLane from here

            self._requests = extract_requests(self.trace, self.t0_ns)
        return self._requests

    def name(self) -> str:
        base = os.path.basename(self.trace.path) if self.trace.path else "trace"
        return f"{base} ({self.trace.header.source})"


def view_of(trace) -> TraceView:
    """A ``TraceView`` of a view, a ``Trace`` or a path."""
    return trace if isinstance(trace, TraceView) else TraceView(as_trace(trace))
