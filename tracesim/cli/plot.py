"""``tracesim plot TRACE -o out.png``: draw a trace's timeline, batch composition, or two runs compared."""

from __future__ import annotations

import os

from tracesim.cli.main import UsageError

KINDS = ("timeline", "batches", "compare")
_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw a trace as a picture (png, svg, pdf)", description=__doc__)
    p.add_argument("trace", help="trace file (.msgpack)")
    p.add_argument("-o", "--output", required=True, help="image to write; the suffix picks the format")
    p.add_argument("--kind", choices=KINDS, default="timeline", help="what to draw (default: timeline)")
    p.add_argument("--other", help="--kind compare: the perturbed trace drawn under TRACE")
    p.add_argument("--window", help="A:B, time since the trace start, e.g. 120ms:180ms, 1.5s:, :300us "
                                    "(unit ns/us/ms/s, default ms)")
    p.add_argument("--violation", type=int, metavar="N", help="zoom to the N-th violation (1-based)")
    p.add_argument("--policy", help="policy file for the invariant checks (default: the strict policy)")
    p.add_argument("--no-check", action="store_true", help="do not run the checkers (no violations marked)")
    p.add_argument("--size", default="12x7", help="figure size in inches, WxH (default 12x7)")
    p.add_argument("--dpi", type=int, default=100, help="pixels per inch (default 100)")
    p.add_argument("--max-rows", type=int, default=30, help="request rows at most (default 30)")
    p.set_defaults(run=run)


def _size(text: str) -> tuple:
    try:
        w, h = (float(x) for x in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {text!r}: expected WxH in inches, e.g. 12x7") from None
    if not (0 < w <= 100 and 0 < h <= 100):
        raise UsageError(f"--size {text!r}: width and height must be in (0, 100] inches")
    return w, h


def _check_args(args) -> None:
    if os.path.splitext(args.output)[1].lower() not in _FORMATS:
        raise UsageError(f"-o {args.output!r}: the suffix must be one of {', '.join(_FORMATS)}")
    if args.kind == "compare" and not args.other:
        raise UsageError("--kind compare needs --other TRACE (the perturbed run)")
    if args.other and args.kind != "compare":
        raise UsageError("--other is only used with --kind compare")
    if args.window and args.violation is not None:
        raise UsageError("give either --window or --violation, not both")
    if not 1 <= args.dpi <= 1000 or args.max_rows < 1:
        raise UsageError("--dpi must be in [1, 1000] and --max-rows at least 1")


def run(args) -> int:
    _check_args(args)
    size_in = _size(args.size)
    from tqdm import tqdm

    from tracesim import viz
    from tracesim.format import read_trace
    from tracesim.viz.checks import find_violations

    with tqdm(total=4, desc="plot", unit="stage", leave=False, disable=None) as bar:
        trace = read_trace(args.trace)
        other = read_trace(args.other) if args.other else None
        bar.update()
        violations = _violations(find_violations, trace, args)
        other_violations = _violations(find_violations, other, args) if other is not None else None
        bar.update()
        window = _window(viz, trace, violations, args)
        if args.kind == "timeline":
            fig = viz.plot_timeline(trace, window_ns=window, violations=violations, size_in=size_in,
                                    dpi=args.dpi, max_request_rows=args.max_rows)
        elif args.kind == "batches":
            fig = _or_usage(viz.plot_batches, trace, window_ns=window, violations=violations, size_in=size_in,
                            dpi=args.dpi)
        else:
            fig = viz.plot_compare(trace, other, window_ns=window, violations=violations,
                                   other_violations=other_violations, size_in=(size_in[0], size_in[1] * 1.6),
                                   dpi=args.dpi, max_request_rows=min(args.max_rows, 20))
        bar.update()
        try:
            fig.savefig(args.output)
        except OSError as exc:
            raise UsageError(f"-o {args.output!r}: cannot write: {exc.strerror or exc}") from None
        bar.update()
    print(f"wrote {args.output} ({args.kind}, {len(violations)} violation(s) marked)")
    return 0


def _violations(find, trace, args) -> list:
    try:
        return find(trace, args.policy, enabled=not args.no_check)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--policy {args.policy!r}: {exc}") from None


def _window(viz, trace, violations, args):
    if args.window:
        try:
            return viz.parse_window(args.window)
        except ValueError as exc:
            raise UsageError(f"--window: {exc}") from None
    if args.violation is not None:
        if not 1 <= args.violation <= len(violations):
            raise UsageError(f"--violation {args.violation}: the trace has {len(violations)} violation(s)")
        try:
            return viz.violation_window(trace, violations[args.violation - 1])
        except ValueError as exc:
            raise UsageError(f"--violation {args.violation}: {exc}") from None
    return None


def _or_usage(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
