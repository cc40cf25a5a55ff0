"""``tracesim export TRACE --format chrome -o out.json``: a trace (and its violations) for Perfetto."""

from __future__ import annotations

from tracesim.cli.main import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trace as Chrome trace-event JSON (opens in Perfetto)",
                       description=__doc__)
    p.add_argument("trace", help="trace file (.msgpack)")
    p.add_argument("--format", choices=("chrome",), default="chrome", help="output format (default: chrome)")
    p.add_argument("-o", "--output", required=True, help="JSON file to write")
    p.add_argument("--policy", help="policy file for the invariant checks (default: the strict policy)")
    p.add_argument("--no-check", action="store_true", help="do not run the checkers (no violation events)")
    p.set_defaults(run=run)


def run(args) -> int:
    from tracesim.format import read_trace
    from tracesim.viz.checks import find_violations
    from tracesim.viz.chrome import write_chrome

    trace = read_trace(args.trace)
    try:
        violations = find_violations(trace, args.policy, enabled=not args.no_check)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--policy {args.policy!r}: {exc}") from None
    try:
        n = write_chrome(trace, args.output, violations)
    except OSError as exc:
        raise UsageError(f"-o {args.output!r}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {args.output}: {n} trace events, {len(violations)} violation(s); open it in "
          f"https://ui.perfetto.dev")
    return 0
