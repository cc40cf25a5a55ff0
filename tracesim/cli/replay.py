"""``tracesim replay TRACE [--scenario FILE] [--loop FILE] [--seed N] [--timing exact|fitted]
[--scheduler native|vllm] [--compare-backends] -o OUT``.

A recorded RL loop (rewards, trainer consumption) is replayed with a loop policy inferred from the recording,
printed to stderr; ``--loop FILE``'s ``[loop]`` keys replace inferred ones."""

from __future__ import annotations

import json
import sys

from tracesim.cli.explore import add_loop_option, print_loop_policy
from tracesim.cli.simulate import add_run_options


def add_parser(sub) -> None:
    p = sub.add_parser("replay", help="replay a recorded trace through the simulator")
    p.add_argument("trace", help="recorded trace (.msgpack)")
    p.add_argument("--scenario", help="TOML scenario: engine overheads, step-time model")
    add_loop_option(p)
    p.add_argument("--timing", choices=("exact", "fitted"), default="exact",
                   help="exact: recorded step durations; fitted: a step-time model fitted on TRACE")
    add_run_options(p, "replay")
    p.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from tracesim.cli.main import UsageError, keep
    from tracesim.format import read_trace, write_trace
    from tracesim.sim.backends import compare_backends, run_both, with_backend
    from tracesim.sim.fidelity import compare
    from tracesim.sim.replay import replay
    from tracesim.sim.recorded_loop import resolve_loop_policy
    from tracesim.sim.scenario import ScenarioError, load_scenario, refuse_in_replay
    from tracesim.sim.steptime import fit

    trace = read_trace(args.trace)
    try:
        scenario = load_scenario(args.scenario) if args.scenario else None
        if scenario is not None:
            refuse_in_replay(scenario.engine, args.scenario)
        if args.scheduler == "vllm" or args.compare_backends:  # fails clearly when vLLM is missing
            with_backend(scenario, "vllm")
        loop_policy, loop_lines = resolve_loop_policy(trace, args.loop)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    print_loop_policy(loop_lines)
    steptime = None
    if args.timing == "fitted":
        try:
            steptime = fit(trace)
        except ValueError as exc:
            raise UsageError(f"{args.trace}: cannot fit a step-time model: {exc}") from None
    with tqdm(unit="step", file=sys.stderr, disable=args.no_progress or None, desc="replay") as bar:
        out = replay(trace, timing=args.timing, steptime=steptime, seed=args.seed, scenario=scenario, progress=bar,
                     scheduler_backend=args.scheduler, loop_policy=loop_policy)
    write_trace(args.output, out)
    keep(trace, out)
    result = {"output": args.output, "records": len(out.records),
              "scheduler": out.header.engine_config.scheduler_backend, **compare(trace, out).to_dict()}
    if args.compare_backends:
        both = run_both(trace=trace, scenario=scenario, seed=args.seed, timing=args.timing, steptime=steptime)
        result["backends"] = compare_backends(both["native"], both["vllm"]).to_dict()
    print(json.dumps(result))
    return 0
