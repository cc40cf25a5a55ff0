"""``tracesim simulate SCENARIO [--seed N] -o OUT``."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="simulate the engine and RL loop of a scenario")
    p.add_argument("scenario", help="TOML scenario file (see scenarios/)")
    p.add_argument("-o", "--output", required=True, help="simulated trace to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from tracesim.cli.main import UsageError
    from tracesim.format import write_trace
    from tracesim.sim.run import RunInputs, simulate
    from tracesim.sim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    with tqdm(unit="step", file=sys.stderr, disable=args.no_progress or None, desc="simulate") as bar:
        trace = simulate(RunInputs(scenario, args.seed), progress=bar)
    write_trace(args.output, trace)
    print(f"{args.output}: {len(trace.records)} records, {len(trace.of(*_steps()))} steps")
    return 0


def _steps():
    from tracesim.format.records import StepScheduled
    return (StepScheduled,)
