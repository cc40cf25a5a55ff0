"""How closely a replay reproduces its recording (DESIGN §7).

Compared: the step sequence (step index and batch composition: request, prefill tokens, decode tokens, in
batch order), the finishing order (request ids in the order updates finished them), and times. Per-step time
error is the relative difference of step durations (``sched(k+1).t_ns - sched(k).t_ns``); per-request error the
relative difference of latency (engine add to the update that finished it). Times are rebased to each trace's
first record.

What a what-if user reads is compared too, as whole-run figures: output throughput (tokens sampled per second
from the first engine add to the last finish), time to drain (the same span) and the per-request latency
distribution (its p50 / p90 / p99), each as recorded, simulated and relative error. A fitted replay can get
these right while single steps are off (a shared machine's step times are noisy), and they are what a user
changing the configuration reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from operator import itemgetter

import numpy as np

from tracesim.format.records import OutReq, RequestAdded, SchedReq, StepScheduled, StepUpdated
from tracesim.format.trace import compiled_columnizer


@dataclass(frozen=True)
class Fidelity:
    steps_recorded: int
    steps_simulated: int
    batches_identical: int  # steps whose composition matches, from the start
    first_mismatch: int | None  # first step whose composition differs (None: all match)
    finish_order_identical: bool
    step_err_median: float
    step_err_p99: float
    request_err_median: float
    request_err_p99: float
    # whole-run figures, recorded / simulated / relative error (see the module doc)
    throughput_tok_s: tuple = (0.0, 0.0, 0.0)
    drain_ms: tuple = (0.0, 0.0, 0.0)
    latency_p50_ms: tuple = (0.0, 0.0, 0.0)
    latency_p90_ms: tuple = (0.0, 0.0, 0.0)
    latency_p99_ms: tuple = (0.0, 0.0, 0.0)

    @property
    def exact(self) -> bool:
        return (self.first_mismatch is None and self.steps_recorded == self.steps_simulated
                and self.finish_order_identical)

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(trace) -> list:
    """(step, ((req_id, prefill tokens, decode tokens), ...)) of every schedule: a step's composition."""
    return _batches_of(trace.of(StepScheduled))


def _finishes(trace) -> list:
    return [(o.req_id, r.end_ns) for r in trace.of(StepUpdated) for o in r.outs if o.finish_reason is not None]


def _finishes_and_tokens(trace) -> tuple:
    """``(_finishes(trace), tokens sampled)``, in one C pass over the outputs where compiled; tokens None: not
    counted (``_run_figures`` sums them in Python, only where it needs them, as it always did)."""
    fast = compiled_columnizer()  # C loops ~10x faster than the Python here (the reference)
    if fast is not None:
        got = fast.finishes_and_sampled(trace.of(StepUpdated), StepUpdated, OutReq)
        if got is not None:  # None: an odd record, judged by the Python path
            return got
    return _finishes(trace), None


def _q(errs, p: float) -> float:
    return float(np.percentile(errs, p)) if len(errs) else 0.0


def _step_errs(r_sched: list, s_sched: list):
    """``|ds - dr| / max(dr, 1)`` of each step duration (``dr`` recorded, ``ds`` simulated: ``t_ns`` to the next
    schedule's) over the steps both traces have. Where compiled, as numpy arrays when that is bit-identical to
    the Python ints (a list, the reference, else): int64 times whose differences a double holds exactly, so
    each division is the one correctly rounded quotient Python's int / int gives."""
    n = min(len(r_sched), len(s_sched))
    fast = compiled_columnizer()
    if fast is not None and n > 1:
        t_ns = StepScheduled._fields.index("t_ns")
        r, s = fast.int64_column(r_sched[:n], t_ns), fast.int64_column(s_sched[:n], t_ns)  # None: not all ints
        if r is not None and s is not None and min(r.min(), s.min()) > -2**60 and max(r.max(), s.max()) < 2**60:
            dr, ds = np.diff(r), np.diff(s)  # no overflow: the times are under 2**60
            num, den = np.abs(ds - dr), np.maximum(dr, 1)
            if num.max() <= 2**53 and den.max() <= 2**53:
                return num / den
    rt = [r.t_ns for r in r_sched]
    st = [r.t_ns for r in s_sched]
    return [abs((st[i + 1] - st[i]) - (rt[i + 1] - rt[i])) / max(rt[i + 1] - rt[i], 1) for i in range(n - 1)]


def first_mismatch(xs: list, ys: list) -> int | None:
    """Index of the first differing element (a length difference counts at the shorter end); None if equal."""
    first = next((i for i, (a, b) in enumerate(zip(xs, ys)) if a != b), None)
    if first is None and len(xs) != len(ys):
        first = min(len(xs), len(ys))
    return first


def _first_batch_mismatch(rs: list, ss: list) -> int | None:
    """``first_mismatch`` of the two traces' ``_batches``, without building them: a step whose schedule
    entries are equal as a whole (the usual case, compared in C) has equal compositions. Where compiled, a C
    loop first skips the leading steps it shows equal (all of them, in an exact replay)."""
    fast = compiled_columnizer()
    start = fast.equal_batches_prefix(rs, ss, StepScheduled, SchedReq) if fast is not None else 0
    if start:
        rs, ss = rs[start:], ss[start:]
    for i, (a, b) in enumerate(zip(rs, ss), start):
        if a.step == b.step and a.reqs == b.reqs:
            continue
        if _batches_of((a,)) != _batches_of((b,)):
            return i
    return None if len(rs) == len(ss) else start + min(len(rs), len(ss))


def _batches_of(scheds) -> list:
    return [(r.step, tuple((q.req_id, q.prefill_tokens, q.decode_tokens) for q in r.reqs)) for r in scheds]


def compare(recorded, simulated) -> Fidelity:
    r_sched, s_sched = recorded.of(StepScheduled), simulated.of(StepScheduled)
    first = _first_batch_mismatch(r_sched, s_sched)
    same = first if first is not None else len(r_sched)
    (rf, r_tokens), (sf, s_tokens) = _finishes_and_tokens(recorded), _finishes_and_tokens(simulated)
    # Durations are compared step by step over the steps both traces have (matching batches or not).
    step_errs = _step_errs(r_sched, s_sched)
    r0, s0 = recorded.index().start_ns, simulated.index().start_ns
    r_add = {r.req_id: r.t_ns - r0 for r in recorded.of(RequestAdded) if r.side == "engine"}
    s_add = {r.req_id: r.t_ns - s0 for r in simulated.of(RequestAdded) if r.side == "engine"}
    s_fin = {rid: t - s0 for rid, t in sf}
    fast = compiled_columnizer()
    req_errs = fast.request_errs(rf, r_add, s_fin, s_add, r0) if fast is not None else None  # None: in Python
    if req_errs is None:
        req_errs = []
        for rid, t in rf:
            if rid in s_fin and rid in r_add and rid in s_add:
                lat_r, lat_s = t - r0 - r_add[rid], s_fin[rid] - s_add[rid]
                req_errs.append(abs(lat_s - lat_r) / max(lat_r, 1))
    rw, sw = _run_figures(recorded, r_add, rf, r0, r_tokens), _run_figures(simulated, s_add, sf, s0, s_tokens)
    whole = {name: (a, b, abs(b - a) / a if a else 0.0) for name, a, b in zip(_RUN_FIGURES, rw, sw)}
    return Fidelity(len(r_sched), len(s_sched), same, first, [r for r, _ in rf] == [r for r, _ in sf],
                    _q(step_errs, 50), _q(step_errs, 99), _q(req_errs, 50), _q(req_errs, 99), **whole)


_RUN_FIGURES = ("throughput_tok_s", "drain_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms")


def _run_figures(trace, adds: dict, finishes: list, t0: int, tokens: int | None = None) -> tuple:
    """(throughput, drain, latency p50, p90, p99) of one trace; ``adds`` rebased to ``t0``, ``finishes`` not;
    ``tokens``: the trace's tokens sampled if already counted."""
    if not adds or not finishes:
        return (0.0,) * len(_RUN_FIGURES)
    if tokens is None:
        tokens = sum(o.sampled for r in trace.of(StepUpdated) for o in r.outs)
    drain_ns = max(map(itemgetter(1), finishes)) - t0 - min(adds.values())
    fast = compiled_columnizer()
    latencies_ms = fast.latencies_ms(finishes, adds, t0) if fast is not None else None  # None: in Python
    if latencies_ms is None:
        latencies_ms = [(t - t0 - adds[rid]) / 1e6 for rid, t in finishes if rid in adds]
    q50, q90, q99 = np.percentile(latencies_ms, (50, 90, 99)) if latencies_ms else (0.0, 0.0, 0.0)
    return (tokens / (drain_ns / 1e9) if drain_ns > 0 else 0.0, drain_ns / 1e6, float(q50), float(q90), float(q99))
