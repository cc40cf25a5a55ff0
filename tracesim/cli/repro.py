"""``tracesim repro FILE`` or ``tracesim repro (--scenario FILE | --trace FILE [--loop FILE]) --seed N
--perturb 'a(...); b(...)' [--scheduler native|vllm] [--policy FILE] [--expect INVARIANT] [-o OUT]``.

Runs one counterexample again and checks it. Exit 1 while it still fails (the expected invariant, or any
when none is named), 0 saying it no longer does, 2 on bad input.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("repro", help="rerun a counterexample: exit 1 while it still fails", description=__doc__)
    p.add_argument("file", nargs="?", help="repro file written by explore (cex-N.toml)")
    p.add_argument("--scenario", metavar="FILE", help="base scenario (instead of a repro file)")
    p.add_argument("--trace", metavar="FILE", help="base recorded trace (instead of a repro file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--perturb", metavar="LIST", default="", help="perturbations, separated by ';'")
    p.add_argument("--scheduler", choices=("native", "vllm"))
    p.add_argument("--policy", metavar="FILE")
    p.add_argument("--loop", metavar="FILE", help="--trace: TOML [loop] table for the replayed RL loop")
    p.add_argument("--expect", metavar="INVARIANT", help="the invariant that must still fail (default: any)")
    p.add_argument("-o", "--output", metavar="OUT", help="also write the run's trace here")
    p.set_defaults(run=run)


def run(args) -> int:
    from tracesim.cli.explore import base_from_args
    from tracesim.cli.main import UsageError
    from tracesim.explore.report import load_repro, repro_command
    from tracesim.explore.runner import RunSpec, check_base, run_one
    from tracesim.sim.perturb import parse_list
    from tracesim.sim.scenario import ScenarioError

    if args.file:
        if args.scenario or args.trace or args.perturb or args.loop:
            raise UsageError("give a repro FILE or --scenario/--trace with --perturb, not both")
        spec, sig = load_repro(args.file)
        expect = args.expect or (sig.invariant if sig else None)
    else:
        spec = RunSpec(base_from_args(args), args.seed, parse_list(args.perturb))
        expect = args.expect
    try:
        check_base(spec.base)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    out, trace = run_one(spec, keep_trace=True)
    if args.output and trace is not None:
        from tracesim.format import write_trace

        write_trace(args.output, trace)
    if out.error:
        print(f"run could not complete: {out.error}")
        return 1
    failing = [f for f in out.failures if expect is None or f.signature.invariant == expect]
    cmd = repro_command(spec, expect)
    if not failing:
        what = f"{expect} no longer fails" if expect else "no invariant fails"
        others = sorted({f.signature.invariant for f in out.failures})
        extra = f" (other invariants do: {', '.join(others)})" if others else ""
        print(f"passes: {what}{extra}\n  {cmd}")
        return 0
    print(f"still fails: {', '.join(sorted({f.signature.invariant for f in failing}))}")
    for f in failing:
        print(f"  {f.violation.message}" + (f" ({f.count} violations)" if f.count > 1 else ""))
    print(f"  {cmd}")
    return 1
