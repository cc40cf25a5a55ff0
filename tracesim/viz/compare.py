"""An original run and a perturbed one, one above the other on the same time scale, rows in the same order."""

from __future__ import annotations

from tracesim.viz import style
from tracesim.viz.extract import view_of
from tracesim.viz.timeline import draw_timeline


def plot_compare(original, perturbed, *, window_ns=None, violations=None, other_violations=None,
                 labels=("original", "perturbed"), max_request_rows: int = 20, title: str | None = None,
                 size_in=(12.0, 11.0), dpi: int | None = None):
    """Draw two timelines (each a ``Trace`` or a path) sharing the time axis; returns the ``Figure``.

    Times are ns since each trace's own start, so a perturbation shows as a shift against the same axis.
    Request rows of the perturbed run follow the original's order, so the same request sits at the same
    height in both. ``violations`` / ``other_violations`` mark each run's own. Raises as ``plot_timeline``.
    """
    views = (view_of(original), view_of(perturbed))
    end_ns = max(v.end_ns for v in views)
    if window_ns is None:
        window_ns = (0.0, end_ns)
    fig = style.new_figure(size_in, dpi)
    axes = fig.subplots(4, 1, sharex=True, height_ratios=[1, 1.6, 1, 1.6])
    order = None
    handles: dict = {}
    for k, (view, viol) in enumerate(zip(views, (violations, other_violations))):
        ax_engine, ax_req = axes[2 * k], axes[2 * k + 1]
        if order is None:
            order = list(view.requests)  # first appearance order in the original
        for h in draw_timeline(view, ax_engine, ax_req, window_ns=window_ns, violations=viol,
                               max_request_rows=max_request_rows, row_order=order):
            handles.setdefault(h.get_label(), h)
        ax_engine.set_title(f"{labels[k]}: {view.name()} — engine steps", fontsize=9, loc="left")
        if k == 0:
            ax_req.set_xlabel("")
    fig.legend(handles=list(handles.values()), loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(title or f"{labels[0]} vs {labels[1]}", fontsize=11)
    return fig
