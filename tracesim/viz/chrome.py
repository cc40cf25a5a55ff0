"""Chrome trace-event JSON (what Perfetto and chrome://tracing open) for a trace and its violations.

Layout: one process per party, one thread per lane, every pid and tid named by "M" metadata events.

  engine         schedule(), update_from_output(), pause state, batch queue 1..n (steps in flight)
  GPU            forward pass, weight write
  client         control (pauses, aborts), request rows 1..n (requests packed into non-overlapping rows;
                 each request span nests "queued" and one span per policy version that produced its tokens)
  reward workers one thread per worker; each reward is an instant
  trainer        each consumed batch is an instant
  checks         violations, as global instants named by invariant

Times: ``ts``/``dur`` in microseconds since the trace's first event (floats keep ns precision).
"""

from __future__ import annotations

import json
import os

import numpy as np

from tracesim.format import Aborted, CacheReset, RewardBound, TrainerConsumed
from tracesim.viz.extract import TraceView, view_of
from tracesim.viz.lanes import lane_end, pack_rows
from tracesim.viz.marks import violation_time_ns

ENGINE, GPU, CLIENT, REWARD, TRAINER, CHECKS = 1, 2, 3, 4, 5, 6
_PROCESS_NAMES = {ENGINE: "engine", GPU: "GPU", CLIENT: "client", REWARD: "reward workers", TRAINER: "trainer",
                  CHECKS: "checks"}
_ROW_TID = 100  # first tid of numbered rows (batch queue, request rows)


class _Events:
    """Collects events and the names of every (pid, tid) they use."""

    def __init__(self, t0_ns: int):
        self.t0_ns = t0_ns
        self.events: list = []
        self.threads: dict = {}  # (pid, tid) -> name

    def thread(self, pid: int, tid: int, name: str) -> tuple:
        self.threads.setdefault((pid, tid), name)
        return pid, tid

    def span(self, where: tuple, name: str, start_rel_ns: float, end_rel_ns: float, cat: str, args=None):
        ev = {"name": name, "cat": cat, "ph": "X", "pid": where[0], "tid": where[1],
              "ts": start_rel_ns / 1e3, "dur": max(0.0, end_rel_ns - start_rel_ns) / 1e3}
        if args:
            ev["args"] = args
        self.events.append(ev)

    def instant(self, where: tuple, name: str, t_rel_ns: float, cat: str, args=None, scope: str = "t"):
        ev = {"name": name, "cat": cat, "ph": "i", "s": scope, "pid": where[0], "tid": where[1],
              "ts": t_rel_ns / 1e3}
        if args:
            ev["args"] = args
        self.events.append(ev)

    def metadata(self) -> list:
        meta = []
        for pid in sorted({pid for pid, _ in self.threads}):
            meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                         "args": {"name": _PROCESS_NAMES.get(pid, f"engine proc {pid - 100}")}})
            meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        for (pid, tid), name in sorted(self.threads.items()):
            meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
            meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        return meta


def to_chrome(trace, violations=None) -> dict:
    """Chrome trace-event document for ``trace`` (a ``Trace``, ``TraceView`` or path) and ``violations``.

    Returns ``{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}``. Raises
    ``TraceFormatError`` for an unreadable path.
    """
    view = view_of(trace)
    out = _Events(view.t0_ns)
    _steps(view, out)
    _control(view, out)
    _requests(view, out)
    _rewards_and_trainer(view, out)
    _violations(view, violations or (), out)
    header = view.trace.header
    return {"traceEvents": out.metadata() + out.events, "displayTimeUnit": "ns",
            "otherData": {"source": header.source, "tracesim_version": header.tracesim_version,
                          "time_origin_ns": view.t0_ns, "path": view.trace.path or ""}}


def write_chrome(trace, path: str | os.PathLike, violations=None) -> int:
    """Write ``to_chrome(trace, violations)`` as JSON to ``path``; returns the number of events written."""
    doc = to_chrome(trace, violations)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, separators=(",", ":")))  # dumps runs the C encoder; dump would not
    return len(doc["traceEvents"])


def _engine_pid(procs: np.ndarray):
    several = len(np.unique(procs)) > 1
    return (lambda proc: 100 + int(proc)) if several else (lambda proc: ENGINE)


def _steps(view: TraceView, out: _Events) -> None:
    s = view.steps
    if len(s) == 0:
        return
    pid_of = _engine_pid(s.proc)
    in_flight_end = np.where(np.isnan(s.upd_end), view.end_ns, s.upd_end)
    rows = pack_rows(s.sched_start, in_flight_end)
    for i in range(len(s)):
        pid, step = pid_of(s.proc[i]), int(s.step[i])
        args = {"step": step, "requests": int(s.num_reqs[i]), "prefill_tokens": int(s.prefill_tokens[i]),
                "decode_tokens": int(s.decode_tokens[i]), "waiting": int(s.waiting[i]),
                "running": int(s.running[i]), "queue_depth": int(s.queue_depth[i]),
                "preempted": int(s.preempted[i])}
        out.span(out.thread(pid, 1, "schedule()"), f"schedule {step}", s.sched_start[i], s.sched_end[i],
                 "step", args)
        row = int(rows[i])
        out.span(out.thread(pid, _ROW_TID + row, f"batch queue {row + 1}"), f"step {step} in flight",
                 s.sched_start[i], in_flight_end[i], "step", {"step": step})
        if not np.isnan(s.upd_start[i]):
            out.span(out.thread(pid, 2, "update_from_output()"), f"update {step}", s.upd_start[i],
                     s.upd_end[i], "step", {"step": step})
        if not np.isnan(s.exec_start[i]):
            out.span(out.thread(GPU, 1, "forward pass"), f"forward {step}", s.exec_start[i], s.exec_end[i],
                     "step", {"step": step})


def _control(view: TraceView, out: _Events) -> None:
    p = view.pauses
    for start, end, side, mode in zip(p.start, p.end, p.side, p.mode):
        where = out.thread(ENGINE, 3, "pause state") if side == "engine" else out.thread(CLIENT, 1, "control")
        out.span(where, f"paused ({mode})" if mode else "paused", start, end, "pause", {"side": side})
    for start, end, version in zip(p.write_start, p.write_end, p.write_version):
        out.span(out.thread(GPU, 2, "weight write"), f"write weights v{version}", start, end, "weights",
                 {"version": int(version)})
    for r in view.trace.records:
        if type(r) is Aborted:
            out.instant(out.thread(CLIENT, 1, "control"), "abort", r.t_ns - view.t0_ns, "abort",
                        {"req_ids": list(r.req_ids), "reason": r.reason, "side": r.side})
        elif type(r) is CacheReset:
            out.instant(out.thread(ENGINE, 3, "pause state"), "cache reset" if r.ok else "cache reset FAILED",
                        r.t_ns - view.t0_ns, "cache", {"ok": r.ok, "reset_running": r.reset_running})


def _requests(view: TraceView, out: _Events) -> None:
    lanes = list(view.requests.values())
    if not lanes:
        return
    starts = np.array([ln.admitted for ln in lanes])
    ends = np.array([lane_end(ln) for ln in lanes])
    rows = pack_rows(starts, ends)
    for ln, start, end, row in zip(lanes, starts, ends, rows):
        where = out.thread(CLIENT, _ROW_TID + int(row), f"requests {int(row) + 1}")
        versions = sorted({v for _, _, v in ln.segments if v is not None})
        out.span(where, ln.req_id, start, end, "request",
                 {"group_id": ln.group_id, "label_version": ln.label_version, "versions": versions,
                  "finish_reason": ln.finish_reason, "aborted": ln.aborted})
        if ln.first_sched == ln.first_sched and ln.first_sched > start:
            out.span(where, "queued", start, min(ln.first_sched, end), "request")
        for s, e, version in ln.segments:  # nested inside the request span, so clipped to it
            s, e = max(s, start), min(e, end)
            if e >= s:
                out.span(where, "tokens by unknown version" if version is None else f"tokens by v{version}",
                         s, e, "request", {"version": version})


def _rewards_and_trainer(view: TraceView, out: _Events) -> None:
    for r in view.trace.records:
        if type(r) is RewardBound:
            out.instant(out.thread(REWARD, 1 + r.worker, f"reward worker {r.worker}"), f"reward {r.req_id}",
                        r.t_ns - view.t0_ns, "reward",
                        {"req_id": r.req_id, "version": r.version, "reward": r.reward, "digest": r.digest})
        elif type(r) is TrainerConsumed:
            versions = sorted({s.version for s in r.samples if s.version is not None})
            out.instant(out.thread(TRAINER, 1, "consume"), f"train step {r.train_step}", r.t_ns - view.t0_ns,
                        "trainer", {"train_step": r.train_step, "samples": len(r.samples),
                                    "sample_versions": versions, "trainer_version": r.trainer_version})


def _violations(view: TraceView, violations, out: _Events) -> None:
    for v in violations:
        t = violation_time_ns(view, v)
        if t is None:
            t = 0.0  # still listed (at the start) so that nothing a checker found goes missing
        out.instant(out.thread(CHECKS, 1, "violations"), v.invariant, t, "violation",
                    {"message": v.message, "req_id": v.req_id, "step": v.step}, scope="g")
