"""The engine timeline: schedule / execute / update lanes, the batch queue, pauses, weight writes, requests.

Two panels share the time axis (ns since the trace's first event, shown in a readable unit). The engine
panel has one lane per phase of a step; the "batch queue" lanes hold each step from schedule() to the end of
its update, packed so that overlapping steps (async scheduling) sit on separate lanes: two busy lanes at one
time is the overlap. The request panel has one lane per request (or, when there are more requests than
``max_request_rows``, requests packed into rows), coloured by the policy version that produced its tokens.
Intervals closer than a pixel are merged before drawing, so a 100k-step trace draws as fast as a small one.
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tracesim.viz import style
from tracesim.viz.extract import TraceView, view_of
from tracesim.viz.lanes import lane_end, merge_close, pack_rows
from tracesim.viz.marks import ViolationMarks

_PIXELS = 2000  # merge intervals closer than window / _PIXELS: below one pixel at the default size
_BAR_HEIGHT = 0.7


def plot_timeline(trace, *, window_ns=None, violations=None, max_request_rows: int = 30, title: str | None = None,
                  size_in=None, dpi: int | None = None):
    """Draw the timeline of ``trace`` (a ``Trace`` or a path) and return the matplotlib ``Figure``.

    ``window_ns``: ``(start, end)`` ns since the trace's first event (either may be None), e.g. from
    ``parse_window("120ms:180ms")`` or ``violation_window(...)``. ``violations``: ``Violation`` list to mark.
    Raises ``TraceFormatError`` for an unreadable path, ``ValueError`` for an empty window.
    """
    view = view_of(trace)
    fig = style.new_figure(size_in, dpi)
    ax_engine, ax_req = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2.2])
    handles = draw_timeline(view, ax_engine, ax_req, window_ns=window_ns, violations=violations,
                            max_request_rows=max_request_rows)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(title or f"Engine timeline: {view.name()}", fontsize=11)
    return fig


def draw_timeline(view: TraceView, ax_engine, ax_req, *, window_ns=None, violations=None,
                  max_request_rows: int = 30, row_order=None) -> list:
    """Draw onto two given axes; returns legend handles. ``row_order``: req_ids to put first, in that order."""
    start, stop = style.resolve_window(window_ns, view.end_ns)
    unit, scale = style.time_unit(stop - start)
    ctx = _Ctx(start, stop, scale, (stop - start) / _PIXELS)
    handles = _draw_engine(view, ax_engine, ctx)
    marks = ViolationMarks(view, violations or (), start, stop)
    req_handles, row_y = _draw_requests(view, ax_req, ctx, max_request_rows, marks.req_ids, row_order)
    for ax in (ax_engine, ax_req):
        _shade_pauses(view, ax, ctx)
    handles += req_handles + marks.draw(ax_engine, ax_req, scale, row_y)
    ax_req.set_xlim(start / scale, stop / scale)
    ax_req.set_xlabel(f"time since trace start ({unit})")
    return handles


class _Ctx:
    def __init__(self, start, stop, scale, min_gap):
        self.start, self.stop, self.scale, self.min_gap = start, stop, scale, min_gap

    def clip(self, starts, ends):
        """Intervals that meet the window, merged below a pixel; returns (x, width) pairs in plot units."""
        keep = (ends >= self.start) & (starts <= self.stop)
        s, e = merge_close(starts[keep], ends[keep], self.min_gap)
        return np.column_stack((s / self.scale, np.maximum(e - s, self.min_gap) / self.scale))


def _draw_engine(view: TraceView, ax, ctx: _Ctx) -> list:
    steps = view.steps
    lanes = [("schedule", steps.sched_start, steps.sched_end, style.LANE_COLOURS["schedule"])]
    if not np.all(np.isnan(steps.exec_start)):
        lanes.append(("execute", steps.exec_start, steps.exec_end, style.LANE_COLOURS["execute"]))
    lanes.append(("update", steps.upd_start, steps.upd_end, style.LANE_COLOURS["update"]))
    in_flight_end = np.where(np.isnan(steps.upd_end), view.end_ns, steps.upd_end)
    rows = pack_rows(steps.sched_start, in_flight_end) if len(steps) else np.zeros(0, dtype=np.int64)
    n_queue = int(rows.max()) + 1 if len(rows) else 1
    labels = ["weight write", "pause"] + [lane[0] for lane in lanes]
    labels += [f"batch queue {q + 1}" for q in range(n_queue)]
    y = {label: len(labels) - 1 - i for i, label in enumerate(labels)}
    for label, s, e, colour in lanes:
        _draw_lane(ax, ctx, s, e, y[label], (colour, _darker(colour)))
    for q in range(n_queue):
        m = rows == q
        _draw_lane(ax, ctx, steps.sched_start[m], in_flight_end[m], y[f"batch queue {q + 1}"],
                   style.INFLIGHT_COLOURS)
    p = view.pauses
    ax.broken_barh(ctx.clip(p.start, p.end), (y["pause"] - _BAR_HEIGHT / 2, _BAR_HEIGHT), color=style.PAUSE_COLOUR)
    ax.broken_barh(ctx.clip(p.write_start, p.write_end), (y["weight write"] - _BAR_HEIGHT / 2, _BAR_HEIGHT),
                   color=style.WRITE_COLOUR)
    _label_writes(ax, ctx, p, y["weight write"])
    ax.set_yticks(list(y.values()), list(y.keys()), fontsize=8)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_title("engine steps (bars: time spent in each phase)", fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
    return [Patch(color=style.LANE_COLOURS[k], label=f"{k}()" if k != "execute" else "forward pass")
            for k in ("schedule", "execute", "update") if k in y]


def _draw_lane(ax, ctx: _Ctx, s, e, y: float, colours) -> None:
    """Consecutive steps alternate shade when few enough to tell apart (back-to-back forward passes would
    otherwise read as one bar); beyond that the lane is merged below a pixel like any other."""
    visible = np.flatnonzero((e >= ctx.start) & (s <= ctx.stop))
    if len(visible) > _PIXELS // 4:
        ax.broken_barh(ctx.clip(s, e), (y - _BAR_HEIGHT / 2, _BAR_HEIGHT), color=colours[0])
        return
    visible = visible[np.argsort(s[visible], kind="stable")]
    for k in (0, 1):
        idx = visible[k::2]
        bars = np.column_stack((s[idx] / ctx.scale, np.maximum(e[idx] - s[idx], ctx.min_gap) / ctx.scale))
        ax.broken_barh(bars, (y - _BAR_HEIGHT / 2, _BAR_HEIGHT), color=colours[k])


def _darker(colour: str) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#%02x%02x%02x" % (int(r * 0.65), int(g * 0.65), int(b * 0.65))


def _label_writes(ax, ctx: _Ctx, p, y: float) -> None:
    """Name the version each write installs, skipping labels that would touch the previous one."""
    last_x = -np.inf
    min_sep = 0.04 * (ctx.stop - ctx.start)
    for s, e, v in zip(p.write_start, p.write_end, p.write_version):
        if e < ctx.start or s > ctx.stop or s - last_x < min_sep:
            continue
        ax.text(max(e, ctx.start) / ctx.scale, y, f" v{v}", va="center", ha="left", fontsize=7)
        last_x = s


def _shade_pauses(view: TraceView, ax, ctx: _Ctx) -> None:
    """Full-height shading, one collection per kind (thousands of pauses stay one artist each)."""
    p = view.pauses
    for starts, ends, colour, alpha in ((p.start, p.end, style.PAUSE_COLOUR, 0.15),
                                        (p.write_start, p.write_end, style.WRITE_COLOUR, 0.2)):
        xw = ctx.clip(starts, ends)
        style.shade_spans(ax, xw[:, 0], xw[:, 0] + xw[:, 1], colour, alpha)


def _draw_requests(view: TraceView, ax, ctx: _Ctx, max_rows: int, marked: set, row_order) -> tuple:
    """Returns (legend handles, req_id -> y of its row for the requests shown)."""
    lanes = [ln for ln in view.requests.values() if _meets(ln, ctx)]
    lanes.sort(key=lambda ln: (ln.req_id not in marked, ln.admitted, ln.req_id))
    if row_order is not None:
        rank = {req_id: i for i, req_id in enumerate(row_order)}
        lanes.sort(key=lambda ln: rank.get(ln.req_id, len(rank)))
    one_per_row = len(lanes) <= max_rows
    if one_per_row:
        rows = np.arange(len(lanes))
    else:
        starts = np.array([ln.admitted for ln in lanes])
        rows = pack_rows(starts, np.array([lane_end(ln) for ln in lanes]))
    shown = rows < max_rows
    by_version: dict = {}
    queued, aborted = [], []
    row_of = {}
    for ln, row, ok in zip(lanes, rows, shown):
        if not ok:
            continue
        row_of[ln.req_id] = int(row)
        if ln.first_sched == ln.first_sched and ln.first_sched > ln.admitted:
            queued.append((row, ln.admitted, ln.first_sched))
        for s, e, version in ln.segments:
            by_version.setdefault(version, []).append((row, s, e))
        if ln.aborted and ln.end == ln.end:
            aborted.append((row, ln.end))
    n_rows = int(rows[shown].max()) + 1 if np.any(shown) else 1
    handles = _draw_row_bars(ax, ctx, queued, style.QUEUED_COLOUR, n_rows, "queued (admitted, not scheduled)")
    by_colour: dict = {}
    for version in sorted(by_version, key=lambda v: (v is None, v or 0)):
        by_colour.setdefault(style.version_colour(version), []).append(version)
    for colour, versions in by_colour.items():
        bars = [bar for v in versions for bar in by_version[v]]
        handles += _draw_row_bars(ax, ctx, bars, colour, n_rows, _version_label(versions))
    if aborted:
        a = np.array(aborted, dtype=float)
        a = a[(a[:, 1] >= ctx.start) & (a[:, 1] <= ctx.stop)]
        ax.plot(a[:, 1] / ctx.scale, n_rows - 1 - a[:, 0], "kx", ms=5, ls="none")
        handles.append(Line2D([], [], color="k", marker="x", ls="none", label="aborted"))
    _label_rows(ax, lanes, rows, shown, n_rows, one_per_row)
    row_y = {req_id: n_rows - 1 - row for req_id, row in row_of.items()}
    return handles + [Patch(color=style.PAUSE_COLOUR, alpha=0.4, label="pause"),
                      Patch(color=style.WRITE_COLOUR, alpha=0.6, label="weight write")], row_y


def _version_label(versions: list) -> str:
    """Legend text for the versions sharing one colour (the palette repeats after ten versions)."""
    if versions == [None]:
        return "unknown version"
    known = [v for v in versions if v is not None]
    more = f", v{known[1]}, …" if len(known) > 2 else (f", v{known[1]}" if len(known) == 2 else "")
    return f"tokens by policy v{known[0]}{more}" + (" / unknown" if None in versions else "")


def _meets(ln, ctx: _Ctx) -> bool:
    return ln.admitted <= ctx.stop and lane_end(ln) >= ctx.start


def _draw_row_bars(ax, ctx: _Ctx, bars: list, colour: str, n_rows: int, label: str) -> list:
    """Bars ``(row, start, end)`` of one colour, merged per row below a pixel, drawn as one collection."""
    if not bars:
        return []
    a = np.array(bars, dtype=float)
    a = a[(a[:, 2] >= ctx.start) & (a[:, 1] <= ctx.stop)]
    if len(a) == 0:
        return []
    # Times are >= 0 (relative to the trace start): laying rows end to end, `stride` apart, lets one vectorised
    # merge work on every row at once without ever joining two rows.
    stride = 2.0 * (float(np.max(a[:, 1:])) + ctx.min_gap + 1.0)
    s, e = merge_close(a[:, 0] * stride + a[:, 1], a[:, 0] * stride + a[:, 2], ctx.min_gap)
    row = np.floor(s / stride)
    s, e = s - row * stride, e - row * stride
    _rects(ax, s / ctx.scale, np.maximum(e - s, ctx.min_gap) / ctx.scale, n_rows - 1 - row, colour)
    return [Patch(color=colour, label=label)]


def _rects(ax, x, width, y, colour: str) -> None:
    """Many bars as one PolyCollection (one artist, whatever their number)."""
    lo, hi = y - _BAR_HEIGHT / 2, y + _BAR_HEIGHT / 2
    verts = np.stack([np.column_stack(c) for c in ((x, lo), (x, hi), (x + width, hi), (x + width, lo))], axis=1)
    ax.add_collection(PolyCollection(verts, facecolors=colour, edgecolors="none"), autolim=False)


def _label_rows(ax, lanes, rows, shown, n_rows: int, one_per_row: bool) -> None:
    total = len(lanes)
    if one_per_row:
        names = [ln.req_id for ln in lanes]
        fontsize = 8 if n_rows <= 20 else 6
        ax.set_yticks([n_rows - 1 - r for r in rows], names, fontsize=fontsize)
        ax.set_ylabel("request id")
    else:
        ax.set_yticks([])
        hidden = int(np.count_nonzero(~shown))
        note = f", {hidden} not shown" if hidden else ""
        ax.set_ylabel(f"{total} requests packed\ninto {n_rows} rows{note}", fontsize=8)
    ax.set_ylim(-0.6, n_rows - 0.4)
    ax.set_title("requests (admitted → finished; colour: policy version of the tokens)", fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
