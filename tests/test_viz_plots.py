"""Plots render readable, non-blank images of the expected size, on bundled and generated traces."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

import tracesim.plot as tp
from helpers import simulated
from tracesim.check import check_trace
from tracesim.check.violation import Violation
from tracesim.format import read_trace
from tracesim.viz.extract import TraceView
from tracesim.viz.lanes import merge_close, pack_rows

BUNDLED = Path(__file__).resolve().parents[1] / "traces" / "synthetic-small.msgpack"


@pytest.fixture(scope="module")
def demo():
    """A simulated run of a deliberately wrong RL loop (async, keep-mode pauses, labels at admission)."""
    return simulated()


def _saved(fig, tmp_path, name="out.png"):
    path = tmp_path / name
    fig.savefig(path)
    return imread(path)


def _assert_not_blank(img):
    rgb = img[..., :3]
    non_white = np.mean(np.any(rgb < 0.95, axis=-1))
    assert non_white > 0.10, f"only {non_white:.1%} of the pixels are drawn"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 10, "image has almost no colours"


def _drawn_texts(fig):
    """Every text the figure draws: visible tick labels inside the view, titles, labels, legends, notes."""
    texts = [fig._suptitle] + [t for legend in fig.legends for t in legend.get_texts()]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax.xaxis.label, ax.yaxis.label] + list(ax.texts)
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
                if lo <= loc <= hi:
                    texts.append(label)
    return [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]


def _texts(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for text in _drawn_texts(fig):
        yield text, text.get_window_extent(renderer)


def _assert_no_overlapping_text(fig):
    boxes = list(_texts(fig))
    assert boxes, "figure has no text"
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        overlap_w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
        overlap_h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        assert overlap_w <= 1 or overlap_h <= 1, f"{a.get_text()!r} overlaps {b.get_text()!r}"


@pytest.mark.parametrize("draw", [tp.plot_timeline, tp.plot_batches])
def test_plot_of_bundled_trace_is_default_size_and_not_blank(draw, tmp_path):
    img = _saved(draw(BUNDLED), tmp_path)
    assert img.shape[:2] == (700, 1200)
    _assert_not_blank(img)


@pytest.mark.parametrize("draw", [tp.plot_timeline, tp.plot_batches])
def test_text_does_not_overlap_at_default_size_on_bundled_trace(draw):
    _assert_no_overlapping_text(draw(read_trace(BUNDLED)))


def test_axes_carry_units_and_legend_names_every_policy_version():
    fig = tp.plot_timeline(BUNDLED)
    assert fig.axes[-1].get_xlabel() == "time since trace start (ms)"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"tokens by policy v0", "tokens by policy v1", "tokens by policy v2", "weight write",
            "pause"} <= set(labels)


def test_window_zooms_the_time_axis(demo):
    fig = tp.plot_timeline(demo, window_ns=tp.parse_window("60ms:90ms"))
    assert fig.axes[-1].get_xlim() == pytest.approx((60.0, 90.0))


def test_violations_are_marked_with_their_invariant_name(demo, tmp_path):
    violations = check_trace(demo).violations
    fig = tp.plot_timeline(demo, violations=violations[:3], window_ns=tp.violation_window(demo, violations[0]))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(label.startswith(f"✗ {violations[0].invariant}") for label in legend)
    annotated = [t.get_text() for t in fig.axes[1].texts]
    assert violations[0].invariant in annotated
    _assert_not_blank(_saved(fig, tmp_path))


def test_violation_window_contains_the_violation_and_its_events(demo):
    v = Violation("x", "m", "g3.1", None, demo.records[300].t_ns)
    start, end = tp.violation_window(demo, v)
    t = demo.records[300].t_ns - TraceView(demo).t0_ns
    assert start < t < end


def test_violation_without_time_or_step_cannot_be_zoomed_to(demo):
    with pytest.raises(ValueError, match="neither a time nor a step"):
        tp.violation_window(demo, Violation("x", "no time"))


def test_request_straddling_a_weight_update_shows_both_versions(demo):
    lanes = TraceView(demo).requests
    versions = {ln.req_id: [seg[2] for seg in ln.segments] for ln in lanes.values()}
    assert any(v[:2] == [0, 1] for v in versions.values()), "no request produced by v0 then v1"


def test_batch_plot_averages_bins_on_long_traces():
    fig = tp.plot_batches(simulated(num_prompts=120))
    assert re.search(r"mean of every \d+ steps", fig.axes[0].get_ylabel())


def test_batch_plot_of_trace_without_steps_is_an_error(demo):
    from tracesim.format import Trace

    empty = Trace(demo.header, [r for r in demo.records if r.KIND not in ("sched", "upd", "exec")])
    with pytest.raises(ValueError, match="no engine steps"):
        tp.plot_batches(empty)


def test_compare_draws_both_runs_on_one_time_axis(demo, tmp_path):
    fig = tp.plot_compare(demo, simulated(seed=5), labels=("original", "perturbed"))
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[0].startswith("original:") and titles[2].startswith("perturbed:")
    assert fig.axes[0].get_xlim() == fig.axes[3].get_xlim()
    img = _saved(fig, tmp_path)
    assert img.shape[:2] == (1100, 1200)
    _assert_not_blank(img)


def test_many_requests_are_packed_into_bounded_rows():
    fig = tp.plot_timeline(simulated(seed=1), max_request_rows=10)
    assert "packed" in fig.axes[1].get_ylabel()
    assert fig.axes[1].get_ylim()[1] <= 10


intervals = st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(intervals)
def test_packed_rows_never_hold_overlapping_intervals(pairs):
    starts = np.array([float(s) for s, _ in pairs])
    ends = starts + np.array([float(d) for _, d in pairs])
    rows = pack_rows(starts, ends)
    for row in np.unique(rows):
        idx = np.flatnonzero(rows == row)
        order = idx[np.lexsort((ends[idx], starts[idx]))]  # by start, then end: a zero-length interval at t
        # touches, and does not overlap, one that starts at t
        assert np.all(starts[order][1:] >= ends[order][:-1])


@settings(max_examples=60, deadline=None)
@given(intervals, st.integers(0, 50))
def test_merged_intervals_cover_exactly_the_originals_up_to_the_gap(pairs, gap):
    starts = np.array([float(s) for s, _ in pairs])
    ends = starts + np.array([float(d) for _, d in pairs])
    ms, me = merge_close(starts, ends, float(gap))
    assert np.all(ms[1:] > me[:-1] + gap)  # merged runs are separated by more than the gap
    for s, e in zip(starts, ends):  # every original lies inside one merged run
        assert np.any((ms <= s) & (me >= e))
