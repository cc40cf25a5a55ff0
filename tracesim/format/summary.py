"""What ``tracesim info`` shows: a trace's header and the shape of its contents, as a JSON-able dict."""

from __future__ import annotations

from operator import itemgetter

from tracesim.format.engine_settings import SETTINGS
from tracesim.format.records import (
    EVENT_TYPES, Aborted, OutputDelivered, RequestAdded, StepExecuted, StepScheduled, StepUpdated, WeightsUpdated,
)
from tracesim.format.trace import Trace


_WITH_END = tuple(kind for kind in EVENT_TYPES if "end_ns" in kind._fields)
_T_NS = itemgetter(0)  # every event record's t_ns (format/index.py checks at import)


def summarize(trace: Trace, size_bytes: int | None = None, truncated_bytes: int = 0) -> dict:
    """The header and shape of ``trace``. Steps, the trace start and what became of each request come from
    the trace index (``Trace.index()``: its step pairing and request lifecycles, format/index.py)."""
    header = trace.header
    ix = trace.index()
    ends = [r.end_ns for kind in _WITH_END for r in trace.of(kind) if r.end_ns is not None]
    t_first = min(ix.start_ns, min(ends)) if ends else ix.start_ns
    t_last = max(max(map(_T_NS, trace.records)), max(ends, default=0)) if trace.records else None
    step_ids = [st.sched.step for st in ix.step_order]
    req_ids = {r.req_id for r in trace.of(RequestAdded)}
    # Finished = ended with a normal finish reason (stop, length, ...), in the engine or as the client's final
    # frame; aborted = ended aborted in the engine, or aborted by the client. Counted per request id.
    lives = ix.lifecycles
    finished = {rid for rid, incs in lives.items() if any(x.ended == "finished" for x in incs)}
    finished.update(r.req_id for r in trace.of(OutputDelivered) if r.finished and r.finish_reason != "abort")
    aborted = {rid for rid, incs in lives.items() if any(x.ended == "aborted" for x in incs)}
    aborted.update(i for r in trace.of(Aborted) if r.side == "client" for i in r.req_ids)
    versions = set()
    for kind in (WeightsUpdated, StepExecuted, StepUpdated, RequestAdded):
        versions.update(r.version for r in trace.of(kind) if r.version is not None)
    for r in trace.of(OutputDelivered):
        if r.spans:
            versions.update(s.version for s in r.spans)
    return {
        "path": trace.path,
        "size_bytes": size_bytes,
        "truncated_bytes": truncated_bytes,
        "format": f"{header.format_major}.{header.format_minor}",
        "tracesim_version": header.tracesim_version,
        "source": header.source,
        "processes": [p._asdict() for p in header.processes],
        "engine_config": _settings_in_order(header.engine_config),
        "seed": header.seed,
        "inputs": header.inputs,
        "records": len(trace.records),
        "counts": trace.counts(),
        "t_first_ns": t_first if trace.records else None,
        "t_last_ns": t_last,
        "span_s": (t_last - t_first) / 1e9 if trace.records else 0.0,
        "steps": len(trace.of(StepScheduled)),  # schedule records, a repeated one included
        "step_range": [min(step_ids), max(step_ids)] if step_ids else None,
        "requests": len(req_ids),
        "requests_finished": len(finished & req_ids) if req_ids else len(finished),
        "requests_aborted": len(aborted),
        "weight_versions": sorted(versions),
    }


def _settings_in_order(settings) -> dict:
    """The known engine settings in their declared order (engine_settings.py), then the keys this version does
    not know, as the trace has them."""
    known = {key: settings[key] for key in SETTINGS if key in settings}
    return {**known, **settings.extras()}


def format_summary(s: dict) -> str:
    lines = [
        f"trace      {s['path']}" + (f"  ({s['size_bytes'] / 1e3:,.1f} kB)" if s["size_bytes"] is not None else ""),
        f"format     {s['format']} (tracesim {s['tracesim_version']}), source: {s['source']}",
    ]
    for i, p in enumerate(s["processes"]):
        lines.append(f"process {i:<2} {p['role']} on {p['host']}, pid {p['pid']}, rank {p['rank']}")
    if s["engine_config"]:
        lines.append("engine     " + ", ".join(f"{k}={v}" for k, v in s["engine_config"].items()))
    if s["seed"] is not None:
        lines.append(f"seed       {s['seed']}")
    lines.append(f"records    {s['records']:,}: " + ", ".join(f"{k} {n:,}" for k, n in s["counts"].items()))
    if s["t_first_ns"] is not None:
        lines.append(f"time span  {s['span_s']:.6f} s (t_ns {s['t_first_ns']:,} .. {s['t_last_ns']:,})")
    steps = f"{s['steps']:,}" + (f" (step {s['step_range'][0]}..{s['step_range'][1]})" if s["step_range"] else "")
    lines.append(f"steps      {steps}")
    lines.append(f"requests   {s['requests']:,} added, {s['requests_finished']:,} finished, "
                 f"{s['requests_aborted']:,} aborted")
    lines.append("versions   " + (", ".join(map(str, s["weight_versions"])) or "none recorded"))
    if s["truncated_bytes"]:
        lines.append(f"truncated  {s['truncated_bytes']:,} bytes at the end were dropped (partial record)")
    return "\n".join(lines)
