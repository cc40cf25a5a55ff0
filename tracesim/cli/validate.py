"""``tracesim validate FILE``: exit 0 when well-formed and consistent, 1 with the problems, 2 when unreadable."""

from __future__ import annotations

import json
import warnings


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check that a trace is well-formed and consistent", description=__doc__)
    p.add_argument("file", help="trace file (.msgpack)")
    p.add_argument("--json", action="store_true", help='print {"file", "ok", "problems"} as JSON')
    p.set_defaults(run=run)


def run(args) -> int:
    from tracesim.format.errors import TruncatedTraceWarning
    from tracesim.format.trace import read_trace
    from tracesim.format.validate import validate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedTraceWarning)  # reported below as a problem instead
        trace = read_trace(args.file)
    problems = validate(trace, trace.truncated_bytes)
    if args.json:
        print(json.dumps({"file": args.file, "ok": not problems, "problems": problems,
                          "records": len(trace.records), "skipped_unknown_records": trace.skipped}, indent=2))
    elif problems:
        print(f"{args.file}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
    else:
        note = f" ({trace.skipped} records of unknown kinds skipped)" if trace.skipped else ""
        print(f"{args.file}: ok, {len(trace.records):,} records{note}")
    return 1 if problems else 0
