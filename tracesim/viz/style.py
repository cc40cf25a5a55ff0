"""Shared look of every plot: colours per version and invariant, time units, windows, the figure factory."""

from __future__ import annotations

import re

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Policy versions cycle through a qualitative palette; unknown version is grey.
VERSION_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#8172b3", "#c44e52", "#937860", "#da8bc3", "#8c8c8c",
                   "#ccb974", "#64b5cd")
UNKNOWN_VERSION_COLOUR = "#b0b0b0"
QUEUED_COLOUR = "#e8e8e8"
PAUSE_COLOUR = "#9e9e9e"
WRITE_COLOUR = "#f2b134"
LANE_COLOURS = {"schedule": "#2f4b7c", "execute": "#a05195", "update": "#f95d6a"}
INFLIGHT_COLOURS = ("#7aa6c2", "#3d6f8e")  # alternate per step so neighbours stay distinguishable
INVARIANT_COLOURS = ("#d62728", "#9467bd", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e", "#1f77b4", "#2ca02c")

DEFAULT_SIZE_IN = (12.0, 7.0)
DEFAULT_DPI = 100

_UNITS = (("s", 1e9), ("ms", 1e6), ("µs", 1e3), ("ns", 1.0))
_WINDOW_UNITS = {"ns": 1.0, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}


def version_colour(version) -> str:
    if version is None:
        return UNKNOWN_VERSION_COLOUR
    return VERSION_COLOURS[int(version) % len(VERSION_COLOURS)]


def invariant_colours(names) -> dict:
    """A stable colour per invariant name (sorted, so the same names get the same colours in every plot)."""
    return {name: INVARIANT_COLOURS[i % len(INVARIANT_COLOURS)] for i, name in enumerate(sorted(set(names)))}


def time_unit(span_ns: float) -> tuple:
    """``(name, ns per unit)`` that keeps tick labels short for a window of ``span_ns``."""
    for name, scale in _UNITS:
        if span_ns >= 2 * scale:
            return name, scale
    return "ns", 1.0


def new_figure(size_in=None, dpi: int | None = None) -> Figure:
    """A figure on the Agg canvas: no display needed, no pyplot global state (notebooks show it as is)."""
    fig = Figure(figsize=size_in or DEFAULT_SIZE_IN, dpi=dpi or DEFAULT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def parse_window(text: str) -> tuple:
    """Parse ``A:B`` (times since trace start, unit suffix ns/us/ms/s, default ms; either side may be empty).

    Returns ``(start_ns, end_ns)`` with ``None`` for an open side. Raises ``ValueError`` naming the text.
    """
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"window {text!r}: expected A:B, e.g. 120ms:180ms or 1.5s:")
    bounds = []
    for part in parts:
        part = part.strip()
        if not part:
            bounds.append(None)
            continue
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s)?", part)
        if not m:
            raise ValueError(f"window {text!r}: {part!r} is not a time such as 12.5ms, 300us or 2s")
        bounds.append(float(m.group(1)) * _WINDOW_UNITS[m.group(2) or "ms"])
    if None not in bounds and bounds[1] <= bounds[0]:
        raise ValueError(f"window {text!r}: the end must come after the start")
    return tuple(bounds)


def resolve_window(window_ns, end_ns: float) -> tuple:
    """Turn a possibly open ``(start, end)`` (ns since trace start) into a closed one within the trace."""
    if window_ns is None:
        return 0.0, max(end_ns, 1.0)
    start, stop = window_ns
    start = 0.0 if start is None else float(start)
    stop = max(end_ns, start + 1.0) if stop is None else float(stop)
    if stop <= start:
        raise ValueError(f"window ({start}, {stop}) ns: the end must come after the start")
    return start, stop


def shade_spans(ax, x0, x1, colour: str, alpha: float) -> None:
    """Full-height spans ``[x0, x1)`` (data x) as one collection: thousands of pauses stay one artist."""
    import numpy as np
    from matplotlib.collections import PolyCollection

    x0, x1 = np.asarray(x0, dtype=float), np.asarray(x1, dtype=float)
    if len(x0) == 0:
        return
    zeros, ones = np.zeros(len(x0)), np.ones(len(x0))
    verts = np.stack([np.column_stack(c) for c in ((x0, zeros), (x0, ones), (x1, ones), (x1, zeros))], axis=1)
    ax.add_collection(PolyCollection(verts, facecolors=colour, edgecolors="none", alpha=alpha,
                                     transform=ax.get_xaxis_transform()), autolim=False)
