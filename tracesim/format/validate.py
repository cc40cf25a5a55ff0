"""Well-formedness and internal consistency of one trace (what ``tracesim validate`` reports).

This is about the trace as a record of facts, not about binding invariants (those are ``tracesim check``):
times are ordered where the vocabulary says so, steps are counted in order, outputs refer to scheduled steps,
token positions and spans are sane, process indices exist. Steps are paired by the trace index
(``Trace.index()``, format/index.py), the one pairing every reader shares.
"""

from __future__ import annotations

from tracesim.format.records import OutputDelivered, StepScheduled, VersionSpan, WeightsUpdated
from tracesim.format.trace import Trace

KNOWN_SOURCES = ("vllm", "sim", "synthetic")
MAX_PROBLEMS = 200  # enough to act on; a broken trace can have millions


def validate(trace: Trace, truncated_bytes: int = 0) -> list[str]:
    """Return problems as one-line strings (empty: well-formed and consistent), in stream order."""
    problems: list[str] = []
    h = trace.header
    if h.source not in KNOWN_SOURCES:
        problems.append(f"header.source: {h.source!r} is not one of {', '.join(KNOWN_SOURCES)}")
    if not h.processes:
        problems.append("header.processes: empty (every record needs a writing process)")
    if truncated_bytes:
        problems.append(f"truncated: the last {truncated_bytes} bytes are a partial record")
    pairing = _pairing_problems(trace.index())
    for i, r in enumerate(trace.records):
        if len(problems) >= MAX_PROBLEMS:
            problems.append(f"... stopped after {MAX_PROBLEMS} problems")
            break
        where = f"record {i} ({r.KIND}, t_ns {r.t_ns})"
        if r.t_ns < 0:
            problems.append(f"{where}: t_ns is negative")
        end_ns = getattr(r, "end_ns", None)
        if end_ns is not None and end_ns < r.t_ns:
            problems.append(f"{where}: end_ns {end_ns} is before t_ns")
        if pairing:
            found = pairing.pop(id(r), None)
            if found is not None:
                problems.extend(f"{where}: {p}" for p in found)
        if isinstance(r, StepScheduled):
            _check_sched(r, where, problems)
        elif isinstance(r, OutputDelivered):
            _check_delivery(r, where, problems)
        elif isinstance(r, WeightsUpdated) and r.set_ns is not None and r.set_ns < r.t_ns:
            problems.append(f"{where}: version set before the weight write started")
    return problems


def _pairing_problems(ix) -> dict:
    """``id(record) -> [problem, ...]`` of the step records, from the trace index's pairing (format/index.py):
    a schedule whose step is not above every step its process scheduled before it, an execution or update of
    a step not scheduled before it, an update applied before its schedule() returned or applied twice.
    Gaps in the step count, updates out of order and steps never updated are no problem of the trace as a
    record: ``tracesim check`` judges those. (Keyed by identity: a list holding one record object twice gets
    its problems at the first occurrence.)"""
    out: dict = {}

    def add(rec, problem: str) -> None:
        out.setdefault(id(rec), []).append(problem)

    for st in ix.step_order:
        if st.upd is not None and st.upd.t_ns < st.sched.end_ns:
            add(st.upd, f"output of step {st.upd.step} applied before its schedule() returned")
    for fault in ix.step_faults:
        code, st, rec = fault[0], fault[1], fault[2]
        if code in ("sched_twice", "sched_order"):
            highest = fault[3]
            if highest is not None and rec.step <= highest:
                add(rec, f"step {rec.step} does not follow step {highest}")
        elif code == "exec_unscheduled":
            add(rec, f"execution of step {rec.step}, which was never scheduled before it")
        elif code == "upd_unscheduled":
            add(rec, f"output of step {rec.step}, which was never scheduled before it")
        elif code == "upd_twice":
            if rec.t_ns < st.sched.end_ns:
                add(rec, f"output of step {rec.step} applied before its schedule() returned")
            add(rec, f"output of step {rec.step} applied twice")
    return out


def _check_sched(r: StepScheduled, where: str, problems: list) -> None:
    seen = set()
    for e in r.reqs:
        if min(e.prefill_tokens, e.decode_tokens, e.spec_tokens, e.cached_tokens, e.placeholders) < 0:
            problems.append(f"{where}: request {e.req_id} has a negative token count")
        if e.req_id in seen:
            problems.append(f"{where}: request {e.req_id} appears twice in one batch")
        seen.add(e.req_id)
    if not 0.0 <= r.kv_usage <= 1.0:
        problems.append(f"{where}: kv_usage {r.kv_usage} is outside [0, 1]")


def _check_delivery(r: OutputDelivered, where: str, problems: list) -> None:
    if r.start_idx < 0 or r.num_tokens < 0:
        problems.append(f"{where}: negative token position or count for {r.req_id}")
    if r.finished and r.digest is None:
        problems.append(f"{where}: final frame of {r.req_id} has no digest")
    prev_end = 0
    for s in r.spans or ():
        s = VersionSpan(*s)
        if s.start < prev_end or s.end < s.start:
            problems.append(f"{where}: version spans of {r.req_id} overlap or run backwards")
        prev_end = s.end
