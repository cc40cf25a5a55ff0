"""Violations on a picture: a line at the time each broken binding was exposed, named by its invariant."""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from tracesim.viz import style
from tracesim.viz.extract import TraceView, view_of

_MAX_TEXT = 6  # name the invariant next to its mark only while that many marks are visible


def violation_time_ns(view: TraceView, v) -> float | None:
    """Time of a violation in ns since the trace start: its ``t_ns``, else its step's schedule, else None."""
    if getattr(v, "t_ns", None) is not None:
        return float(v.t_ns - view.t0_ns)
    if getattr(v, "step", None) is not None:
        steps = view.steps
        hit = np.flatnonzero(steps.step == v.step)
        if len(hit):
            return float(steps.sched_start[hit[0]])
    return None


def violation_window(trace, violation, margin_ns: float | None = None) -> tuple:
    """``(start_ns, end_ns)`` since trace start around a violation and the events it points at.

    The margin defaults to the larger of half the events' spread, ten median step durations and 1 ms, so
    the steps around the counterexample stay in view. Raises ``ValueError`` if the violation has no time.
    """
    view = view_of(trace)
    times = [violation_time_ns(view, violation)]
    times += [float(e.t_ns - view.t0_ns) for e in getattr(violation, "events", ()) if e.t_ns is not None]
    times = [t for t in times if t is not None]
    if not times:
        raise ValueError(f"violation {violation.invariant!r} has neither a time nor a step to zoom to")
    lo, hi = min(times), max(times)
    if margin_ns is None:
        steps = view.steps
        step_ns = float(np.median(steps.sched_start[1:] - steps.sched_start[:-1])) if len(steps) > 1 else 0.0
        margin_ns = max(0.5 * (hi - lo), 10 * step_ns, 1e6)
    return max(0.0, lo - margin_ns), hi + margin_ns


class ViolationMarks:
    """The violations that fall in ``[start, stop]`` (ns since trace start), ready to draw."""

    def __init__(self, view: TraceView, violations, start: float, stop: float):
        self.req_ids = {v.req_id for v in violations if getattr(v, "req_id", None) is not None}
        self.colours = style.invariant_colours(v.invariant for v in violations)
        self.marks = []  # (t ns, violation)
        self.untimed = 0
        for v in violations:
            t = violation_time_ns(view, v)
            if t is None:
                self.untimed += 1
            elif start <= t <= stop:
                self.marks.append((t, v))

    def draw(self, ax_engine, ax_req, scale: float, row_y: dict) -> list:
        """Lines on both panels, a cross on the request's row; returns one legend handle per invariant."""
        counts: dict = {}
        top = ax_req.get_ylim()[1]
        named = len(self.marks) <= _MAX_TEXT
        for i, (t, v) in enumerate(sorted(self.marks, key=lambda m: m[0])):
            colour = self.colours[v.invariant]
            counts[v.invariant] = counts.get(v.invariant, 0) + 1
            x = t / scale
            for ax in (ax_engine, ax_req):
                ax.axvline(x, color=colour, lw=1.2, ls="--", alpha=0.9, zorder=5)
            y = row_y.get(v.req_id, top - 0.5)
            ax_req.plot([x], [y], marker="X", ms=9, color=colour, mec="white", zorder=6, ls="none")
            if named:
                ax_req.annotate(v.invariant, (x, y), xytext=(6, -14 - 11 * (i % 3)), textcoords="offset points",
                                fontsize=7, color=colour, zorder=7,
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
        handles = [Line2D([], [], color=self.colours[name], marker="X", ls="--", label=f"✗ {name} ({n})")
                   for name, n in sorted(counts.items())]
        if self.untimed:
            handles.append(Line2D([], [], ls="none", label=f"{self.untimed} violation(s) without a time"))
        return handles
