"""Fit a per-step cost model on a trace: forward-pass time as a linear function of batch composition.

Features of step k: prefill tokens, decode tokens, context tokens (tokens attended to: computed + scheduled,
summed over the batch). The forward-pass time of step k is read from ``StepExecuted`` when the trace has it;
otherwise it is estimated from the engine's own records as ``upd(k).t_ns - start(k)`` with ``start(k) =
max(sched(k).end_ns, upd(k-1).t_ns)`` (the GPU starts k when k is submitted and k-1 is done). Every 5th step
is held out; errors are reported on those.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import itemgetter

import numpy as np

from tracesim.format.index import index_trace
from tracesim.format.trace import compiled_columnizer
from tracesim.format.records import StepExecuted, StepScheduled, StepUpdated
from tracesim.sim.scenario import StepTime
from tracesim.sim.timing import MISSING, batch_features

HOLD_OUT_EVERY = 5


@dataclass(frozen=True)
class StepCosts:
    """What a trace says each engine action cost, by step (nanoseconds): ``StepTable`` as dicts, for the fit."""

    features: dict  # step -> (prefill, decode, context)
    exec_ns: dict  # step -> forward-pass time
    sched_ns: dict  # step -> schedule() time
    upd_ns: dict  # step -> update_from_output() time
    gaps: dict  # "sched" | "upd" -> {step: time since the previous engine action ended}


@dataclass(frozen=True)
class StepTable:
    """What a trace says each engine action cost, by step, as int64 arrays of nanoseconds (``MISSING`` where
    the trace has no such action): exact replay looks a step up in them (``timing.RecordedTiming``).

    A step's row is ``step - first_step``, or ``rows[step]`` where the steps are too sparse for one row per
    step number (``rows`` is None otherwise): a dict per column cost replay ~0.2 s to build on a 118k-step
    trace, these arrays are built by numpy."""

    first_step: int
    rows: dict | None
    sched_ns: np.ndarray  # schedule() time
    upd_ns: np.ndarray  # update_from_output() time
    exec_ns: np.ndarray  # forward-pass time
    sched_gap_ns: np.ndarray  # time from the end of the previous engine action to the schedule's start
    upd_gap_ns: np.ndarray  # the same, to the update's start

    def as_dict(self, column: np.ndarray) -> dict:
        """``{step: value}`` of one of the columns, without its MISSING cells, in step order."""
        if self.rows is None:
            steps = range(self.first_step, self.first_step + len(column))
        else:
            steps = self.rows  # step -> row, rows numbered in step order
        return {k: v for k, v in zip(steps, column.tolist()) if v != MISSING}


def step_costs(trace) -> StepCosts:
    """Measure per-step costs from one engine's sched / upd / exec records (the first engine process), paired
    by the trace's index (``Trace.index()``: built once, shared with replay, checks and plots)."""
    ix = trace.index() if hasattr(trace, "index") else index_trace(trace)
    _proc, scheds, execs, upds = ix.engine_steps()
    return costs_of_steps(scheds, upds, execs, ix.start_ns)


def costs_of_steps(scheds: dict, upds: dict, execs: dict, t0: int) -> StepCosts:
    """``step_costs`` from records already picked out: step -> StepScheduled / StepExecuted / StepUpdated (the
    last of each step in stream order); ``t0`` = the trace's first t_ns."""
    table = step_table(scheds, upds, execs, t0)
    return StepCosts({k: batch_features(r.reqs) for k, r in scheds.items()}, table.as_dict(table.exec_ns),
                     table.as_dict(table.sched_ns), table.as_dict(table.upd_ns),
                     {"sched": table.as_dict(table.sched_gap_ns), "upd": table.as_dict(table.upd_gap_ns)})


def step_table(scheds: dict, upds: dict, execs: dict, t0: int) -> StepTable:
    """The ``StepTable`` of step -> StepScheduled / StepExecuted / StepUpdated records; ``t0`` = the trace's
    first t_ns.

    * schedule and update times: end_ns - t_ns of their records;
    * forward-pass time of each scheduled step: its StepExecuted's, else (no StepExecuted) estimated as
      ``upd(k).t_ns - max(sched(k).end_ns, upd(k').t_ns)``, k' the last scheduled step before k with an
      update (the GPU starts k when k is submitted and k' is done), at least 0; none without an update;
    * gaps: engine actions ordered by start time, ties by kind (a schedule first), then by step; each one's
      gap runs from the end of the one before (the first one's from ``t0``), at least 0."""
    s_steps, u_steps, e_steps = (np.fromiter(d, np.int64, len(d)) for d in (scheds, upds, execs))
    s_t, s_end = _times(scheds.values())
    u_t, u_end = _times(upds.values())
    e_t, e_end = _times(execs.values())
    every = np.concatenate([s_steps, u_steps, e_steps])
    if not len(every):
        empty = np.empty(0, np.int64)
        return StepTable(0, None, empty, empty, empty, empty, empty)
    first, last = int(every.min()), int(every.max())
    if last - first < 4 * len(every) + 4096:  # one row per step number: a few rows per record at most
        rows, size = None, last - first + 1
        def row_of(steps):
            return steps - first
    else:
        numbers = np.unique(every)
        rows, size = dict(zip(numbers.tolist(), range(len(numbers)))), len(numbers)
        def row_of(steps):
            return np.searchsorted(numbers, steps)
    sched_ns, upd_ns, exec_ns, measured, upd_start = (np.full(size, MISSING, np.int64) for _ in range(5))
    sched_ns[row_of(s_steps)] = s_end - s_t
    upd_ns[row_of(u_steps)] = u_end - u_t
    measured[row_of(e_steps)] = e_end - e_t
    upd_start[row_of(u_steps)] = u_t
    # forward passes, scheduled steps in step order
    order = np.argsort(s_steps, kind="stable")
    at = row_of(s_steps[order])
    done = upd_start[at]  # each one's update start (MISSING: none)
    has_upd = done != MISSING
    last_with_upd = np.maximum.accumulate(np.where(has_upd, np.arange(len(at)), -1))
    before = np.concatenate([np.array([-1], np.int64), last_with_upd[:-1]])  # the last one before, with an update
    sched_end = s_end[order]
    start = np.where(before >= 0, np.maximum(sched_end, done[before]), sched_end)
    estimated = np.where(has_upd, np.maximum(0, done - start), MISSING)
    exec_ns[at] = np.where(measured[at] != MISSING, measured[at], estimated)
    sched_gap_ns, upd_gap_ns = np.full(size, MISSING, np.int64), np.full(size, MISSING, np.int64)
    gap = _gaps(s_steps, u_steps, np.concatenate([s_t, u_t]), np.concatenate([s_end, u_end]), t0)
    sched_gap_ns[row_of(s_steps)] = gap[:len(s_steps)]
    upd_gap_ns[row_of(u_steps)] = gap[len(s_steps):]
    return StepTable(first, rows, sched_ns, upd_ns, exec_ns, sched_gap_ns, upd_gap_ns)


_T_NS, _END_NS = StepScheduled._fields.index("t_ns"), StepScheduled._fields.index("end_ns")
if any((kind._fields.index("t_ns"), kind._fields.index("end_ns")) != (_T_NS, _END_NS)
       for kind in (StepExecuted, StepUpdated)):
    raise TypeError("_times reads t_ns and end_ns at one position in every step record: they moved")


def _times(records) -> tuple:
    """int64 arrays of the t_ns and the end_ns of step records: arrays, not a tuple per record (replay runs
    this on traces of 100k+ steps); read by the compiled columnizer where it is built."""
    records = list(records)
    fast = compiled_columnizer()
    if fast is not None:
        t, end = fast.int64_column(records, _T_NS), fast.int64_column(records, _END_NS)
        if t is not None and end is not None:  # None: a time that is not an int64, for numpy to judge below
            return t, end
    both = np.fromiter(chain.from_iterable(map(itemgetter(_T_NS, _END_NS), records)), np.int64, 2 * len(records))
    return both[0::2], both[1::2]


def _gaps(sched_steps, upd_steps, t, end, t0: int):
    """Each engine action's gap (``step_table``), an int64 array: those of ``sched_steps`` then of
    ``upd_steps`` (int64 arrays), whose start and end times ``t`` / ``end`` hold in that order."""
    if not len(t):
        return np.empty(0, np.int64)
    steps = np.concatenate([sched_steps, upd_steps])
    kind = np.repeat(np.array([0, 1], dtype=np.int64), [len(sched_steps), len(upd_steps)])
    order = np.lexsort((steps, kind, t))  # by t, then kind, then step
    # The first action's gap runs from the trace's first record (where replay puts t=0).
    previous_end = np.concatenate([np.array([t0], dtype=np.int64), end[order][:-1]])
    gap = np.empty_like(t)
    gap[order] = np.maximum(0, t[order] - previous_end)
    return gap


@dataclass(frozen=True)
class FitResult:
    steptime: StepTime
    sched_us: int
    update_us: int
    step_gap_us: int  # median gap between actions while busy
    train_steps: int
    test_steps: int
    median_rel_err: float  # on held-out steps
    p99_rel_err: float
    median_abs_err_us: float

    def to_toml(self) -> str:
        st = self.steptime
        return (f"[steptime]\nbase_us = {st.base_us:.3f}\nprefill_us = {st.prefill_us:.4f}\n"
                f"decode_us = {st.decode_us:.4f}\ncontext_us_per_1k = {st.context_us_per_1k:.4f}\n\n"
                f"[engine]\nsched_us = {self.sched_us}\nupdate_us = {self.update_us}\n"
                f"step_gap_us = {self.step_gap_us}\n")


def fit(trace) -> FitResult:
    """Least-absolute-deviations fit (coefficients >= 0) of exec time on step features; raises ValueError when
    the trace has fewer than 5 measurable steps."""
    costs = step_costs(trace)
    steps = sorted(k for k in costs.exec_ns if k in costs.features)
    if len(steps) < 5:
        raise ValueError(f"only {len(steps)} steps with a measurable forward-pass time (need 5)")
    x = np.array([(1.0, *costs.features[k]) for k in steps], dtype=float)
    x[:, 3] /= 1000.0  # context per 1k tokens
    y = np.array([costs.exec_ns[k] for k in steps], dtype=float)
    test = np.array([i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 for i in range(len(steps))])
    coef = _nonneg_lad(x[~test], y[~test])
    pred = x[test] @ coef
    rel = np.abs(pred - y[test]) / np.maximum(y[test], 1.0)
    st = StepTime(coef[0] / 1e3, coef[1] / 1e3, coef[2] / 1e3, coef[3] / 1e3)
    busy_gaps = [g for kind in ("sched", "upd") for g in costs.gaps[kind].values()]
    return FitResult(st, int(np.median(list(costs.sched_ns.values())) / 1e3),
                     int(np.median(list(costs.upd_ns.values()) or [0]) / 1e3),
                     int(np.percentile(busy_gaps, 50) / 1e3) if busy_gaps else 0,
                     int((~test).sum()), int(test.sum()), float(np.median(rel)), float(np.percentile(rel, 99)),
                     float(np.median(np.abs(pred - y[test])) / 1e3))


ROBUST_ITERATIONS = 30


def _nonneg_lad(x, y):
    """Least absolute deviations by iteratively reweighted least squares, coefficients >= 0.

    Recorded step times have a long tail (a shared machine stalls single steps by several times their length);
    least squares lets that tail pull every predicted step up, the median fit follows the typical step. On the
    bundled RL recordings it halved the held-out median error (0.24 -> 0.11, 0.64 -> 0.13; docs/simulator.md)."""
    floor = 1e-3 * max(float(np.median(y)), 1.0)  # residuals below it weigh as it does: no division by ~0
    weight = np.ones(len(y))
    coef = np.zeros(x.shape[1])
    for _ in range(ROBUST_ITERATIONS):
        coef = _nonneg_lstsq(x * weight[:, None], y * weight)
        weight = 1.0 / np.sqrt(np.maximum(np.abs(y - x @ coef), floor))
    return coef


def _nonneg_lstsq(x, y):
    """Least squares, refitting without the features whose coefficient came out negative."""
    active = list(range(x.shape[1]))
    while True:
        coef_a, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        neg = [a for a, c in zip(active, coef_a) if c < 0]
        if not neg:
            coef = np.zeros(x.shape[1])
            coef[active] = coef_a
            return coef
        active = [a for a in active if a not in neg]
        if not active:
            return np.zeros(x.shape[1])
