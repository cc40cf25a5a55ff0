"""Well-formedness and internal consistency of one trace (what ``tracesim validate`` reports).

This is about the trace as a record of facts, not about binding invariants (those are ``tracesim check``):
times are ordered where the vocabulary says so, steps are counted in order, outputs refer to scheduled steps,
token positions and spans are sane, process indices exist.
"""

from __future__ import annotations

from tracesim.format.records import (
    OutputDelivered, StepExecuted, StepScheduled, StepUpdated, VersionSpan, WeightsUpdated,
)
from tracesim.format.trace import Trace

KNOWN_SOURCES = ("vllm", "sim", "synthetic")
MAX_PROBLEMS = 200  # enough to act on; a broken trace can have millions


def validate(trace: Trace, truncated_bytes: int = 0) -> list[str]:
    """Return problems as one-line strings (empty: well-formed and consistent)."""
    problems: list[str] = []
    h = trace.header
    if h.source not in KNOWN_SOURCES:
        problems.append(f"header.source: {h.source!r} is not one of {', '.join(KNOWN_SOURCES)}")
    if not h.processes:
        problems.append("header.processes: empty (every record needs a writing process)")
    if truncated_bytes:
        problems.append(f"truncated: the last {truncated_bytes} bytes are a partial record")
    last_step: dict = {}  # proc -> last scheduled step
    scheduled: dict = {}  # (proc, step) -> StepScheduled
    updated: set = set()
    for i, (proc, r) in enumerate(trace.with_procs()):
        if len(problems) >= MAX_PROBLEMS:
            problems.append(f"... stopped after {MAX_PROBLEMS} problems")
            break
        where = f"record {i} ({r.KIND}, t_ns {r.t_ns})"
        if r.t_ns < 0:
            problems.append(f"{where}: t_ns is negative")
        end_ns = getattr(r, "end_ns", None)
        if end_ns is not None and end_ns < r.t_ns:
            problems.append(f"{where}: end_ns {end_ns} is before t_ns")
        if isinstance(r, StepScheduled):
            prev = last_step.get(proc)
            if prev is not None and r.step <= prev:
                problems.append(f"{where}: step {r.step} does not follow step {prev}")
            last_step[proc] = r.step
            scheduled[(proc, r.step)] = r
            _check_sched(r, where, problems)
        elif isinstance(r, StepUpdated):
            sched = scheduled.get((proc, r.step))
            if sched is None:
                problems.append(f"{where}: output of step {r.step}, which was never scheduled before it")
            elif r.t_ns < sched.end_ns:
                problems.append(f"{where}: output of step {r.step} applied before its schedule() returned")
            if (proc, r.step) in updated:
                problems.append(f"{where}: output of step {r.step} applied twice")
            updated.add((proc, r.step))
        elif isinstance(r, StepExecuted) and (proc, r.step) not in scheduled:
            problems.append(f"{where}: execution of step {r.step}, which was never scheduled before it")
        elif isinstance(r, OutputDelivered):
            _check_delivery(r, where, problems)
        elif isinstance(r, WeightsUpdated) and r.set_ns is not None and r.set_ns < r.t_ns:
            problems.append(f"{where}: version set before the weight write started")
    return problems


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
