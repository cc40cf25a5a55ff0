"""The text report of ``tracesim check``: violations grouped by invariant and cause, times in ms from the trace
start, one worked example per cause with the records that explain it (the cause first), the rest listed by
group with a count. ``--json`` keeps every violation; this is for reading."""

from __future__ import annotations

EXAMPLES = 2  # violations shown in full per (invariant, cause) bucket; the rest are listed by request
LISTED = 12  # request ids listed per group before "..."
MAX_LINE = 400  # characters: messages echo ids and digests from the trace, which a hostile trace makes huge


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 3] + "..."


def _ms(t_ns, t0) -> str:
    return f"{(t_ns - (t0 or 0)) / 1e6:.3f} ms"


def _event(e, t0) -> str:
    where = " ".join(x for x in (f"step {e.step}" if e.step is not None else "", e.req_id or "") if x)
    return f"      {e.kind:11s} at {_ms(e.t_ns, t0):>13s}  {where}".rstrip()


def _by_group(violations) -> list:
    groups: dict = {}
    for v in violations:
        groups.setdefault(v.group_id, []).append(v.req_id or "-")
    lines = []
    for g, reqs in groups.items():
        ids = list(dict.fromkeys(reqs))
        shown = ", ".join(ids[:LISTED]) + (f", ... ({len(ids) - LISTED} more)" if len(ids) > LISTED else "")
        lines.append(f"    {'group ' + g if g is not None else 'no group'} ({len(reqs)}): {shown}")
    return lines


def violation_lines(report) -> list:
    t0 = report.trace_start_ns
    buckets: dict = {}
    for v in report.violations:
        buckets.setdefault(v.invariant, {}).setdefault(v.cause, []).append(v)
    lines = []
    for name, causes in buckets.items():
        n = sum(len(vs) for vs in causes.values())
        lines.append(f"{name}: {n} violation(s)" + (f", {len(causes)} cause(s)" if len(causes) > 1 else ""))
        for cause, vs in causes.items():
            if cause is not None:
                lines.append(f"  cause ({len(vs)}): {cause}")
            for v in vs[:EXAMPLES]:
                where = " ".join(x for x in (f"step {v.step}" if v.step is not None else "",
                                             f"at {_ms(v.t_ns, t0)}" if v.t_ns is not None else "") if x)
                lines.append(f"    {v.message}" + (f"  [{where}]" if where else ""))
                lines.extend(_event(e, t0) for e in v.events)
            if len(vs) > EXAMPLES:
                lines.append(f"    ... {len(vs) - EXAMPLES} more like these; all {len(vs)} by group:")
                lines.extend(_by_group(vs))
    return [_cut(line) for line in lines]
