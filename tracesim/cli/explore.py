"""``tracesim explore (TRACE [--loop FILE] | --scenario FILE) [--policy FILE] [--budget N | --time S]
[--workers N] [--ray ADDR] [--seed N] [--scheduler native|vllm] [--space env|loop|faults[,...]] [--json] [-o DIR]``.

A TRACE's recorded RL loop is replayed with a loop policy inferred from the recording (printed to stderr
before the search); ``--loop FILE``'s ``[loop]`` keys replace inferred ones.

Exit 0 when no run broke an invariant, 1 with counterexamples (each shrunk, confirmed and saved), 2 on bad
input. See docs/explore.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("explore", help="search perturbed runs for broken bindings; shrink and report each",
                       description=__doc__)
    p.add_argument("trace", nargs="?", help="recorded trace to perturb (exact replay is the base run)")
    p.add_argument("--scenario", metavar="FILE", help="TOML scenario to perturb instead of a trace")
    p.add_argument("--policy", metavar="FILE", help="TOML policy the checkers judge against (default: strict)")
    add_loop_option(p)
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--budget", type=int, metavar="N", help="runs to try (default 200)")
    limit.add_argument("--time", type=float, metavar="S", help="seconds to search (then shrink what was found)")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: the cores)")
    p.add_argument("--ray", metavar="ADDR", help="run on Ray: 'auto', an address, or 'local' (the [ray] extra)")
    p.add_argument("--seed", type=int, default=0, help="exploration seed: same seed, same runs and findings")
    p.add_argument("--scheduler", choices=("native", "vllm"),
                   help="scheduling backend: the native model, or vLLM's own scheduler in virtual time")
    p.add_argument("--space", type=_spaces, default=("env",), metavar="env|loop|faults[,...]",
                   help="env: timings, races, client actions and engine settings a correct loop must survive; "
                        "loop: also changes to the loop's own protocol (write before drain, late labels, abort "
                        "handling, retry ids, timeouts, cache-reset calls); faults: also the engine's "
                        "output-accounting faults. A list (loop,faults) searches all of them; env always")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing runs as found")
    p.add_argument("--no-plot", action="store_true", help="do not draw the counterexamples' timelines")
    p.add_argument("--json", action="store_true", help="print the result as JSON (see docs/explore.md)")
    p.add_argument("-o", "--output", metavar="DIR", default="counterexamples",
                   help="where counterexamples are saved (default ./counterexamples)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run, bulk=False)  # many short runs: each collects its own garbage (explore/runner.py)


def add_loop_option(p) -> None:
    p.add_argument("--loop", metavar="FILE",
                   help="TRACE: TOML [loop] table (version_label, version_read, reward_match) for the replayed RL "
                        "loop; its keys replace those inferred from the recording")


def _spaces(text: str) -> tuple:
    """``--space``: a comma list of search spaces; ``env`` is always searched."""
    from tracesim.explore.targets import SPACES

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SPACES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more of {', '.join(SPACES)}, comma-separated")
    return tuple(n for n in SPACES if n == "env" or n in names)


def print_loop_policy(lines, file=None) -> None:
    """The loop policy a replay runs with, one line per setting with its reason (stderr by default)."""
    print("replayed loop policy:", file=file or sys.stderr)
    for line in lines:
        print(f"  {line}", file=file or sys.stderr)


def base_from_args(args, need_one: bool = True):
    """The Base named by TRACE / --scenario (exactly one), with --scheduler, --policy and --loop."""
    from tracesim.cli.main import UsageError
    from tracesim.explore.runner import Base

    trace, scenario = getattr(args, "trace", None), getattr(args, "scenario", None)
    if bool(trace) == bool(scenario):
        raise UsageError("give either a TRACE or --scenario FILE (one of them)")
    loop = getattr(args, "loop", None)
    if loop and scenario:
        raise UsageError("--loop applies to a recorded TRACE (a scenario has its own [loop] table)")
    return Base("trace" if trace else "scenario", trace or scenario, args.scheduler, args.policy, loop)


def run(args) -> int:
    from tqdm import tqdm

    from tracesim.cli.main import UsageError
    from tracesim.explore import explore, format_result, result_json, save
    from tracesim.explore.report import clear
    from tracesim.explore.runner import check_base, loop_policy
    from tracesim.sim.scenario import ScenarioError

    base = base_from_args(args)
    if args.budget is not None and args.budget < 1:
        raise UsageError(f"--budget must be at least 1, got {args.budget}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    try:
        check_base(base)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    if base.kind == "trace":
        print_loop_policy(loop_policy(base)[1])
    budget = args.budget if args.budget is not None else (None if args.time is not None else 200)
    spaces = args.space
    with tqdm(total=budget, unit="run", file=sys.stderr, disable=args.no_progress or None, desc="explore") as bar:
        result = explore(base, budget=budget, time_s=args.time, seed=args.seed, workers=args.workers, ray=args.ray,
                         spaces=spaces, shrink_failures=not args.no_shrink, progress=bar)
    clear(args.output)
    for n, f in enumerate(result.findings, 1):
        save(f, args.output, n, plot=not args.no_plot)
    if args.json:
        print(json.dumps(result_json(result), indent=1))
    else:
        print(format_result(result))
    return 1 if result.findings else 0
