"""``tracesim parity TRACE --model DIR``: recompute the trace's recorded logprobs from a checkpoint, and diagnose.

Exit 0 when every recorded series matches the processed recompute within the tolerance and no finding is made,
1 with findings, 2 when the trace or model cannot be used (no logprobs recorded, unloadable checkpoint). See
docs/parity.md for what each finding means.
"""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("parity", help="recompute recorded behaviour logprobs from a checkpoint and diagnose gaps",
                       description=__doc__)
    p.add_argument("trace", help="trace file (.msgpack) recorded with logprobs (record_tokens / record_logprobs)")
    p.add_argument("--model", metavar="DIR", required=True, help="HF checkpoint directory the samples came from")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="precision of the recompute (default float32)")
    p.add_argument("--lm-head-fp32", action="store_true",
                   help="run the final projection (lm_head) in float32 whatever --dtype says")
    p.add_argument("--tolerance", type=float, metavar="NATS",
                   help="mean |Δlogprob| per token a series may differ by (default 0.01 float32, 0.05 bfloat16)")
    p.add_argument("--model-version", type=int, metavar="V",
                   help="policy version of --model: mismatches on tokens other versions sampled are attributed "
                   "to them, with their token ranges")
    p.add_argument("--json", action="store_true", help="print the per-series numbers and findings as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from tracesim.check import CheckReport
    from tracesim.check.text import violation_lines
    from tracesim.cli.main import UsageError
    from tracesim.format.trace import read_trace
    from tracesim.parity import NAMES, parity

    if args.tolerance is not None and not args.tolerance > 0:
        raise UsageError(f"--tolerance: must be a positive number of nats, not {args.tolerance}")
    trace = read_trace(args.trace)
    result = parity(trace, args.model, dtype=args.dtype, lm_head_fp32=args.lm_head_fp32, tolerance=args.tolerance,
                    model_version=args.model_version, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_table(result)
        report = CheckReport(violations=result.violations, checked=list(NAMES),
                             trace_start_ns=trace.records[0].t_ns if trace.records else None)
        for line in violation_lines(report):
            print(line)
        verdict = "ok" if not result.violations else f"{len(result.violations)} finding(s)"
        print(f"{args.trace}: {verdict}; {result.samples} sample(s), {len(result.stats)} series, tolerance "
              f"{result.tolerance:g} nats, lm_head {result.head_dtype}")
    return 1 if result.violations else 0


def _print_table(result) -> None:
    head = f"{'sample':16s} {'role':9s} {'source':7s} {'tokens':>6s} {'mean|Δ|':>9s} {'max|Δ|':>9s} " \
           f"{'e^|Δ|-1':>9s} {'KL(seq)':>9s} {'>tol':>5s} {'out-mass':>8s}  finding"
    print(head)
    for s in result.stats:
        print(f"{s.req_id[:16]:16s} {s.role:9s} {s.source:7s} {s.tokens:6d} {s.mean_abs:9.4g} {s.max_abs:9.4g} "
              f"{s.mean_ratio_err:9.4g} {s.kl_seq:9.4g} {s.beyond:5.0%} {s.outside_mass_max:8.3g}  "
              f"{s.finding or '-'}")
    for role, o in result.overall.items():
        print(f"{'overall':16s} {role:9s} {'':7s} {o['tokens']:6d} {o['mean_abs']:9.4g} {o['max_abs']:9.4g} "
              f"{o['mean_ratio_err']:9.4g} {o['kl_seq_mean']:9.4g} {o['beyond']:5.0%}")
