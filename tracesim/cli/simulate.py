"""``tracesim simulate SCENARIO [--seed N] [--scheduler native|vllm] [--compare-backends] -o OUT``."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="simulate the engine and RL loop of a scenario")
    p.add_argument("scenario", help="TOML scenario file (see scenarios/)")
    add_run_options(p, "simulate")
    p.set_defaults(run=run)


def add_run_options(p, verb: str) -> None:
    """Options shared by ``simulate`` and ``replay``: output, seed, scheduling backend, progress."""
    p.add_argument("-o", "--output", required=True, help="simulated trace to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", choices=("native", "vllm"),
                   help="scheduling backend (overrides the scenario): the native model or vLLM's own scheduler")
    p.add_argument("--compare-backends", action="store_true",
                   help=f"also {verb} with both backends and print how far they agree (needs vLLM)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from tqdm import tqdm

    from tracesim.cli.main import UsageError
    from tracesim.format import write_trace
    from tracesim.sim.backends import compare_backends, run_both, with_backend
    from tracesim.sim.run import RunInputs, StuckRunError, simulate
    from tracesim.sim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario)
        if args.scheduler is not None:
            scenario = with_backend(scenario, args.scheduler, f"{args.scenario} (--scheduler)")
        if args.compare_backends:  # fails clearly when vLLM is missing
            with_backend(scenario, "vllm", f"{args.scenario} (--compare-backends)")
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    with tqdm(unit="step", file=sys.stderr, disable=args.no_progress or None, desc="simulate") as bar:
        try:
            trace = simulate(RunInputs(scenario, args.seed), progress=bar)
        except StuckRunError as exc:  # the loop hung (a client waiting forever): keep what it recorded
            if exc.trace is None:
                raise
            write_trace(args.output, exc.trace)
            print(f"{args.scenario}: the run hung ({exc}); wrote the {len(exc.trace.records)} records up to then "
                  f"to {args.output}: `tracesim check` names what never ended", file=sys.stderr)
            return 1
    write_trace(args.output, trace)
    backend = scenario.engine.scheduler_backend
    print(f"{args.output}: {len(trace.records)} records, {len(trace.of(*_steps()))} steps ({backend} scheduler)")
    if args.compare_backends:
        both = run_both(scenario=scenario, seed=args.seed)
        print(json.dumps({"backends": compare_backends(both["native"], both["vllm"]).to_dict()}))
    return 0


def _steps():
    from tracesim.format.records import StepScheduled
    return (StepScheduled,)
