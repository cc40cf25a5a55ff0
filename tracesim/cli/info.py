"""``tracesim info FILE``: header, counts per kind, time span, steps, requests, weight versions."""

from __future__ import annotations

import json
import os


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="summarise a trace", description=__doc__)
    p.add_argument("file", help="trace file (.msgpack)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from tracesim.format.summary import format_summary, summarize
    from tracesim.format.trace import read_trace

    trace = read_trace(args.file)
    summary = summarize(trace, os.path.getsize(args.file), trace.truncated_bytes)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0
