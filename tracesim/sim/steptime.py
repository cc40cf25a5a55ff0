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

from tracesim.format.index import index_trace, start_of
from tracesim.format.trace import compiled_columnizer
from tracesim.format.records import StepScheduled, StepUpdated
from tracesim.sim.scenario import StepTime
from tracesim.sim.timing import batch_features

HOLD_OUT_EVERY = 5


@dataclass(frozen=True)
class StepCosts:
    """What a trace says each engine action cost, by step (nanoseconds)."""

    features: dict  # step -> (prefill, decode, context)
    exec_ns: dict  # step -> forward-pass time
    sched_ns: dict  # step -> schedule() time
    upd_ns: dict  # step -> update_from_output() time
    gaps: dict  # "sched" | "upd" -> {step: time since the previous engine action ended}


def first_t_ns(records) -> int:
    """The earliest ``t_ns`` of the records that have one (0 if none): ``format.index.start_of``."""
    return start_of(records)


def step_costs(trace) -> StepCosts:
    """Measure per-step costs from one engine's sched / upd / exec records (the first engine process), paired
    by the trace's index (``Trace.index()``: built once, shared with replay, checks and plots)."""
    ix = trace.index() if hasattr(trace, "index") else index_trace(trace)
    _proc, scheds, execs, upds = ix.engine_steps()
    return costs_of_steps(scheds, upds, exec_ns_of(execs), ix.start_ns)


def exec_ns_of(execs: dict) -> dict:
    """step -> forward-pass ns, from step -> StepExecuted."""
    return {k: r.end_ns - r.t_ns for k, r in execs.items()}


def costs_of_steps(scheds: dict, upds: dict, execs: dict, t0: int, features: bool = True) -> StepCosts:
    """``step_costs`` from records already picked out: step -> StepScheduled / StepUpdated (the last of each
    step in stream order), step -> forward-pass ns of a StepExecuted; ``t0`` = the trace's first t_ns.
    ``features=False`` leaves ``features`` empty (exact replay needs only the times)."""
    features = {k: batch_features(r.reqs) for k, r in scheds.items()} if features else {}
    exec_ns, prev_done = {}, None
    for k in sorted(scheds):
        s, u = scheds[k], upds.get(k)
        if k in execs:
            exec_ns[k] = execs[k]
        elif u is not None:
            start = s.end_ns if prev_done is None else max(s.end_ns, prev_done)
            exec_ns[k] = max(0, u.t_ns - start)
        prev_done = u.t_ns if u is not None else prev_done
    sched_t, sched_end = _times(scheds.values())
    upd_t, upd_end = _times(upds.values())
    return StepCosts(features, exec_ns, dict(zip(scheds, (sched_end - sched_t).tolist())),
                     dict(zip(upds, (upd_end - upd_t).tolist())),
                     _gaps(list(scheds), list(upds), np.concatenate([sched_t, upd_t]),
                           np.concatenate([sched_end, upd_end]), t0))


_T_NS, _END_NS = StepScheduled._fields.index("t_ns"), StepScheduled._fields.index("end_ns")
if (StepUpdated._fields.index("t_ns"), StepUpdated._fields.index("end_ns")) != (_T_NS, _END_NS):
    raise TypeError("_times reads t_ns and end_ns at one position in StepScheduled and StepUpdated: they moved")


def _times(records) -> tuple:
    """int64 arrays of the t_ns and the end_ns of StepScheduled / StepUpdated ``records``: arrays, not a tuple
    per record (replay runs this on traces of 100k+ steps); read by the compiled columnizer where it is built."""
    records = list(records)
    fast = compiled_columnizer()
    if fast is not None:
        t, end = fast.int64_column(records, _T_NS), fast.int64_column(records, _END_NS)
        if t is not None and end is not None:  # None: a time that is not an int64, for numpy to judge below
            return t, end
    both = np.fromiter(chain.from_iterable(map(itemgetter(_T_NS, _END_NS), records)), np.int64, 2 * len(records))
    return both[0::2], both[1::2]


def _gaps(sched_steps: list, upd_steps: list, t, end, t0: int) -> dict:
    """"sched" | "upd" -> {step: time from the end of the previous engine action to its start}. ``t`` / ``end``:
    start and end times of the actions of ``sched_steps`` then of ``upd_steps``. Ordered by start time; ties by
    kind (a schedule first), then by step."""
    if not len(t):
        return {"sched": {}, "upd": {}}
    steps = np.array(sched_steps + upd_steps, dtype=np.int64)
    kind = np.repeat(np.array([0, 1], dtype=np.int64), [len(sched_steps), len(upd_steps)])
    order = np.lexsort((steps, kind, t))  # by t, then kind, then step
    # The first action's gap runs from the trace's first record (where replay puts t=0).
    previous_end = np.concatenate([np.array([t0], dtype=np.int64), end[order][:-1]])
    gap = np.empty_like(t)
    gap[order] = np.maximum(0, t[order] - previous_end)
    n = len(sched_steps)
    return {"sched": dict(zip(sched_steps, gap[:n].tolist())), "upd": dict(zip(upd_steps, gap[n:].tolist()))}


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
