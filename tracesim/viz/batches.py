"""Batch composition per engine step: prefill vs decode tokens scheduled, running and waiting requests.

The x axis is the step index. Above ``_MAX_POINTS`` steps in view, consecutive steps are averaged in equal
bins (the axis label says so), which keeps 100k-step traces as fast and as readable as short ones.
"""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tracesim.viz import style
from tracesim.viz.extract import view_of
from tracesim.viz.marks import violation_time_ns

_MAX_POINTS = 1000
PREFILL_COLOUR, DECODE_COLOUR = "#4c72b0", "#55a868"
RUNNING_COLOUR, WAITING_COLOUR = "#333333", "#c44e52"


def plot_batches(trace, *, window_ns=None, violations=None, title: str | None = None, size_in=None,
                 dpi: int | None = None):
    """Draw per-step batch composition of ``trace`` (a ``Trace`` or a path); returns the ``Figure``.

    ``window_ns``: ``(start, end)`` ns since the trace start; steps scheduled inside it are shown.
    Raises ``TraceFormatError`` for an unreadable path, ``ValueError`` when the trace has no engine steps.
    """
    view = view_of(trace)
    steps = view.steps
    if len(steps) == 0:
        raise ValueError(f"{view.name()}: no engine steps (StepScheduled records) to plot")
    proc = np.bincount(steps.proc).argmax()  # several engine processes: the busiest one
    start, stop = style.resolve_window(window_ns, view.end_ns)
    sel = np.flatnonzero((steps.proc == proc) & (steps.sched_start >= start) & (steps.sched_start <= stop))
    if len(sel) == 0:
        raise ValueError(f"{view.name()}: no engine step is scheduled in the window")
    fig = style.new_figure(size_in, dpi)
    ax_tok, ax_req = fig.subplots(2, 1, sharex=True, height_ratios=[1.4, 1])
    bin_steps = max(1, -(-len(sel) // _MAX_POINTS))
    x = _binned(steps.step[sel], bin_steps, np.min)
    prefill = _binned(steps.prefill_tokens[sel], bin_steps, np.mean)
    decode = _binned(steps.decode_tokens[sel], bin_steps, np.mean)
    ax_tok.fill_between(x, 0, prefill, step="post", color=PREFILL_COLOUR, lw=0)
    ax_tok.fill_between(x, prefill, prefill + decode, step="post", color=DECODE_COLOUR, lw=0)
    ax_req.step(x, _binned(steps.running[sel], bin_steps, np.mean), where="post", color=RUNNING_COLOUR, lw=1.2)
    ax_req.step(x, _binned(steps.waiting[sel], bin_steps, np.mean), where="post", color=WAITING_COLOUR, lw=1.2)
    every = "" if bin_steps == 1 else f", mean of every {bin_steps} steps"
    ax_tok.set_ylabel(f"tokens scheduled\nper step{every}", fontsize=9)
    ax_req.set_ylabel("requests after\nschedule()", fontsize=9)
    ax_req.set_xlabel("engine step (schedule() call index)")
    ax_tok.set_ylim(bottom=0)
    ax_req.set_ylim(bottom=0)
    ax_req.set_xlim(x[0], steps.step[sel][-1] + 1)
    handles = [Patch(color=PREFILL_COLOUR, label="prefill tokens"), Patch(color=DECODE_COLOUR, label="decode tokens"),
               Line2D([], [], color=RUNNING_COLOUR, label="running requests"),
               Line2D([], [], color=WAITING_COLOUR, label="waiting requests")]
    step_of = _time_to_step(steps.sched_start[sel], steps.step[sel])
    handles += _shade(view.pauses, (ax_tok, ax_req), step_of, start, stop)
    handles += _mark(view, violations or (), (ax_tok, ax_req), step_of, start, stop)
    for ax in (ax_tok, ax_req):
        ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(title or f"Batch composition per step: {view.name()}", fontsize=11)
    return fig


def _binned(values: np.ndarray, k: int, reduce) -> np.ndarray:
    if k == 1:
        return values.astype(float)
    pad = (-len(values)) % k
    v = values.astype(float)
    if pad:  # the last bin is shorter: NaN-pad it and reduce ignoring NaN
        v = np.concatenate((v, np.full(pad, np.nan)))
    v = v.reshape(-1, k)
    return {np.mean: np.nanmean, np.min: np.nanmin}[reduce](v, axis=1)


def _time_to_step(sched_start: np.ndarray, step: np.ndarray):
    """Map ns since trace start to a fractional step index (the step being scheduled at that time)."""
    def step_of(t_ns):
        i = np.clip(np.searchsorted(sched_start, t_ns, side="right") - 1, 0, len(step) - 1)
        return step[i]
    return step_of


def _shade(p, axes, step_of, start: float, stop: float) -> list:
    """Pauses and weight writes that meet the window, as spans over the steps they cover."""
    handles = []
    for starts, ends, colour, label in ((p.start, p.end, style.PAUSE_COLOUR, "pause"),
                                        (p.write_start, p.write_end, style.WRITE_COLOUR, "weight write")):
        meet = (ends >= start) & (starts <= stop)
        if not np.any(meet):
            continue
        x0, x1 = step_of(starts[meet]), step_of(ends[meet]) + 1
        for ax in axes:
            style.shade_spans(ax, x0, x1, colour, 0.3)
        handles.append(Patch(color=colour, alpha=0.5, label=label))
    return handles


def _mark(view, violations, axes, step_of, start, stop) -> list:
    colours = style.invariant_colours(v.invariant for v in violations)
    counts: dict = {}
    for v in violations:
        t = violation_time_ns(view, v)
        if t is None or not start <= t <= stop:
            continue
        x = v.step if v.step is not None else step_of(t)
        for ax in axes:
            ax.axvline(x, color=colours[v.invariant], ls="--", lw=1.2, zorder=5)
        counts[v.invariant] = counts.get(v.invariant, 0) + 1
    return [Line2D([], [], color=colours[n], ls="--", label=f"✗ {n} ({c})") for n, c in sorted(counts.items())]
