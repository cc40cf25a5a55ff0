"""What ``tracesim info`` shows: a trace's header and the shape of its contents, as a JSON-able dict."""

from __future__ import annotations

from tracesim.format.engine_settings import SETTINGS
from tracesim.format.records import (
    Aborted, OutputDelivered, RequestAdded, StepExecuted, StepScheduled, StepUpdated, WeightsUpdated,
)
from tracesim.format.trace import Trace


def summarize(trace: Trace, size_bytes: int | None = None, truncated_bytes: int = 0) -> dict:
    header = trace.header
    t_values = [r.t_ns for r in trace.records]
    t_values += [r.end_ns for r in trace.records if getattr(r, "end_ns", None) is not None]
    steps = [r.step for r in trace.records if isinstance(r, StepScheduled)]
    req_ids = {r.req_id for r in trace.records if isinstance(r, RequestAdded)}
    # Finished = ended with a normal finish reason (stop, length, ...); aborted requests are counted apart.
    finished = {r.req_id for r in trace.records
                if isinstance(r, OutputDelivered) and r.finished and r.finish_reason != "abort"}
    for r in trace.records:
        if isinstance(r, StepUpdated):
            finished.update(o.req_id for o in r.outs if o.finish_reason not in (None, "abort"))
    aborted = {i for r in trace.records if isinstance(r, Aborted) for i in r.req_ids}
    versions = set()
    for r in trace.records:
        if isinstance(r, (WeightsUpdated, StepExecuted, StepUpdated, RequestAdded)) and r.version is not None:
            versions.add(r.version)
        elif isinstance(r, OutputDelivered) and r.spans:
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
        "t_first_ns": min(t_values) if t_values else None,
        "t_last_ns": max(t_values) if t_values else None,
        "span_s": (max(t_values) - min(t_values)) / 1e9 if t_values else 0.0,
        "steps": len(steps),
        "step_range": [min(steps), max(steps)] if steps else None,
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
