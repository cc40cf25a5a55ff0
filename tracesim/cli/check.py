"""``tracesim check TRACE [--policy FILE] [--json]``: check the binding invariants of a trace.

Exit 0 when no invariant is violated, 1 with violations, 2 when the trace or policy cannot be read, 3 on an
internal error, 4 when nothing is violated but the trace is incomplete: it ends inside a record (truncated: only
the complete records before it were checked) or holds records of kinds this tracesim does not know (skipped).
Invariants the trace lacks the records for are listed as "not checkable: missing ..." and do not fail.
"""

from __future__ import annotations

import json
import os
import sys

_PROGRESS_MIN_BYTES = 16 << 20  # show a progress bar when reading traces at least this large


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="check the binding invariants of a trace", description=__doc__)
    p.add_argument("trace", help="trace file (.msgpack)")
    p.add_argument("--policy", metavar="FILE", help="TOML policy file (default: the strict policy)")
    p.add_argument("--only", metavar="NAME", action="append",
                   help="check only this invariant (repeatable); see docs/checkers.md for names")
    p.add_argument("--json", action="store_true",
                   help='print {"violations": [...], "not_checkable": {...}, "checked": [...], "waived": {...}, '
                   '"lost_records": N, "truncated": {"bytes": N, "offset": N} or null, "skipped_records": N}')
    p.set_defaults(run=run)


def _read(path: str):
    """read_trace, with a tqdm bar on stderr for large files."""
    import os

    from tracesim.format.trace import read_trace

    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    if size < _PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        return read_trace(path)
    from tqdm import tqdm

    with tqdm(desc="reading", unit=" rec", unit_scale=True, file=sys.stderr, leave=False) as bar:
        return read_trace(path, progress=lambda n: bar.update(n - bar.n))


def run(args) -> int:
    from tracesim.check import INVARIANTS, Policy, check_trace, load_policy
    from tracesim.cli.main import UsageError, keep

    policy = load_policy(args.policy) if args.policy else Policy()
    if args.only:
        unknown = [n for n in args.only if n not in INVARIANTS]
        if unknown:
            raise UsageError(f"unknown invariant {unknown[0]!r}; known: {', '.join(INVARIANTS)}")
    trace = _read(args.trace)
    report = check_trace(trace, policy, only=args.only)
    keep(trace, report)
    # A trace that ends inside a record was checked only up to its last complete record: never a plain pass.
    offset = None
    if report.truncated_bytes:
        try:
            offset = os.path.getsize(args.trace) - report.truncated_bytes
        except OSError:
            pass
    if args.json:
        data = report.to_json()
        if data.get("truncated") is not None:
            data["truncated"]["offset"] = offset
        print(json.dumps(data, indent=2))
    else:
        _print_text(args.trace, trace, report)
        if report.truncated_bytes:
            at = f" at byte {offset:,}" if offset is not None else ""
            print(f"trace truncated: {args.trace} ends inside a record{at}: {report.truncated_bytes:,} byte(s) "
                  f"dropped; only the {len(trace.records):,} complete record(s) before it were checked"
                  + ("" if report.violations else " (exit 4)"))
        if report.skipped_records:
            print(f"records skipped: {report.skipped_records:,} record(s) of kinds this tracesim does not know "
                  "(written by a newer format version) were not checked" + ("" if report.violations else " (exit 4)"))
    if report.violations:
        return 1
    return 4 if report.truncated_bytes or report.skipped_records else 0


def _print_text(path: str, trace, report) -> None:
    from tracesim.check.text import violation_lines

    for line in violation_lines(report):
        print(line)
    for name, why in report.not_checkable.items():
        print(f"{name}: not checkable: {why}")
    for name, why in report.waived.items():
        print(f"{name}: waived: {why}")
    if report.lost_records:
        print(f"warning: the recorder lost {report.lost_records:,} record(s); a violation may come from a missing one")
    counts = {}
    for v in report.violations:
        counts[v.invariant] = counts.get(v.invariant, 0) + 1
    verdict = "ok" if not report.violations else \
        f"{len(report.violations)} violation(s) of " + ", ".join(f"{k} ({n})" for k, n in counts.items())
    for proc, steps in report.in_flight_at_end.items():
        print(f"note: engine process {proc}: the trace ends with step(s) {', '.join(map(str, steps[:8]))} scheduled "
              "and never updated (the recording stopped there, or the engine died)")
    print(f"{path}: {verdict}; {len(report.checked)} invariant(s) checked, {len(report.not_checkable)} not "
          f"checkable, {len(report.waived)} waived ({len(trace.records):,} records)")
