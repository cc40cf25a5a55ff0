"""``tracesim fit TRACE [-o FILE]``: fit the per-step cost model and report its held-out error."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("fit", help="fit a step-time model on a trace and report its error on held-out steps")
    p.add_argument("trace")
    p.add_argument("-o", "--output", help="write the fitted [steptime]/[engine] tables as scenario TOML")
    p.set_defaults(run=run)


def run(args) -> int:
    from tracesim.cli.main import UsageError
    from tracesim.format import read_trace
    from tracesim.sim.steptime import fit

    trace = read_trace(args.trace)
    try:
        result = fit(trace)
    except ValueError as exc:
        raise UsageError(f"{args.trace}: cannot fit a step-time model: {exc}") from None
    st = result.steptime
    print(f"exec_us = {st.base_us:.1f} + {st.prefill_us:.3f}*prefill + {st.decode_us:.3f}*decode "
          f"+ {st.context_us_per_1k:.3f}*context/1k")
    print(f"held-out steps: {result.test_steps} (trained on {result.train_steps}); relative error median "
          f"{result.median_rel_err:.3f}, p99 {result.p99_rel_err:.3f}; median abs error {result.median_abs_err_us:.1f} us")
    if args.output:
        with open(args.output, "w") as f:
            f.write(result.to_toml())
    return 0
