"""Merge traces written by several processes into one timeline.

Each process stamps ``t_ns`` on its own monotonic clock and records a clock anchor (a monotonic and a wall
reading taken together) in its header. Merging rebases every record onto the monotonic clock of the first
process: processes on the same host share ``CLOCK_MONOTONIC``, so their times are kept as they are (more
precise than the wall clock); a process on another host is shifted by the difference of the two anchors'
wall-minus-monotonic offsets. The merged header lists every process (its ``mono_anchor_ns`` re-expressed on
the merged clock, so merging again shifts nothing) and each record keeps the index of the process that wrote
it. Records are ordered by ``t_ns``; ties keep input order, then stream order.
"""

from __future__ import annotations

import os

from tracesim.format.engine_settings import EngineSettings
from tracesim.format.records import Header, ProcessInfo
from tracesim.format.trace import Trace, read_trace


def merge_traces(inputs, *, source: str | None = None) -> Trace:
    """Merge ``inputs`` (Trace objects or paths) into one Trace; raises TraceFormatError for unreadable paths."""
    traces = [t if isinstance(t, Trace) else read_trace(t) for t in inputs]
    if not traces:
        raise ValueError("merge_traces needs at least one trace")
    ref = traces[0].header.processes[0]
    processes: list = []
    keyed: list = []  # (t_ns, input index, position, proc, record)
    for k, trace in enumerate(traces):
        base = len(processes)
        offsets = []
        for info in trace.header.processes:
            offset_ns = _clock_offset_ns(info, ref)
            offsets.append(offset_ns)
            processes.append(info._replace(mono_anchor_ns=info.mono_anchor_ns + offset_ns))
        for pos, (proc, record) in enumerate(trace.with_procs()):
            offset_ns = offsets[proc] if proc < len(offsets) else 0
            if offset_ns:
                record = _shift(record, offset_ns)
            keyed.append((record.t_ns, k, pos, base + proc, record))
    keyed.sort(key=lambda e: e[:3])
    header = _merged_header(traces, tuple(processes), source)
    procs = [e[3] for e in keyed]
    return Trace(header, [e[4] for e in keyed], procs if any(procs) else [])


def _clock_offset_ns(info: ProcessInfo, ref: ProcessInfo) -> int:
    if info.host == ref.host:
        return 0  # same host: one monotonic clock
    return (info.wall_anchor_ns - info.mono_anchor_ns) - (ref.wall_anchor_ns - ref.mono_anchor_ns)


def _shift(record, offset_ns: int):
    changes = {name: getattr(record, name) + offset_ns for name in record._fields
               if name.endswith("_ns") and getattr(record, name) is not None}
    return record._replace(**changes)


def _merged_header(traces: list, processes: tuple, source: str | None) -> Header:
    first = traces[0].header
    sources = {t.header.source for t in traces}
    engine = next((t.header for t in traces if any(p.role.startswith("engine") for p in t.header.processes)),
                  first)
    # The engine core's settings, and the settings only other processes state (e.g. the client's workload).
    settings = dict(engine.engine_config)
    for t in traces:
        for key, value in t.header.engine_config.items():
            settings.setdefault(key, value)
    inputs = dict(first.inputs)
    inputs["merged_from"] = [str(t.path) if t.path else f"<trace {i}>" for i, t in enumerate(traces)]
    return first._replace(
        source=source or (first.source if len(sources) == 1 else "vllm" if "vllm" in sources else first.source),
        processes=processes, engine_config=EngineSettings(settings), inputs=inputs,
        created_wall_ns=min(t.header.created_wall_ns for t in traces))


def merge_files(paths: list, out: str | os.PathLike) -> Trace:
    """Merge trace files and write the result to ``out``."""
    from tracesim.format.trace import write_trace

    merged = merge_traces(paths)
    write_trace(out, merged)
    return merged
