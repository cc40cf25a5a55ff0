"""Pictures of traces: matplotlib timelines for notebooks and a Chrome trace-event export for Perfetto.

Every function takes a ``Trace`` (recorded or simulated, the same type) or a path to one, and an optional
list of ``tracesim.check.Violation`` to mark. Plot functions return a ``matplotlib.figure.Figure`` on the
Agg canvas (no display needed; a notebook shows it as the cell's value; ``fig.savefig(path)`` writes it).
"""

from tracesim.viz.batches import plot_batches
from tracesim.viz.chrome import to_chrome, write_chrome
from tracesim.viz.compare import plot_compare
from tracesim.viz.extract import TraceView
from tracesim.viz.marks import violation_window
from tracesim.viz.style import parse_window
from tracesim.viz.timeline import plot_timeline

__all__ = ["TraceView", "parse_window", "plot_batches", "plot_compare", "plot_timeline", "to_chrome",
           "violation_window", "write_chrome"]
