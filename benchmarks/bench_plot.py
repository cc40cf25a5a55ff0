"""Plot and export time on a 100k-step trace, against reading that trace from disk in the same run.

    .venv/bin/python benchmarks/bench_plot.py [--steps 100000]

The trace is simulated by ``tracesim.sim`` from ``scenarios/keep-bad-bindings.toml`` scaled up (async
scheduling, two steps in flight, keep-mode weight updates, every record kind of the RL loop). Reported: seconds per stage and the
ratio to ``read_trace`` of the same file (the baseline: what a user pays anyway before drawing anything).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracesim.format import read_trace, write_trace  # noqa: E402
from tracesim.viz import TraceView, plot_batches, plot_timeline, write_chrome  # noqa: E402
from tracesim.sim.run import RunInputs, simulate  # noqa: E402
from tracesim.sim.scenario import load_scenario  # noqa: E402

STEPS_PER_PROMPT = 11  # keep-bad-bindings.toml gives ~12 steps per prompt: err towards more steps


def simulated(steps: int):
    import dataclasses

    s = load_scenario(os.path.join(os.path.dirname(__file__), "..", "scenarios", "keep-bad-bindings.toml"))
    workload = dataclasses.replace(s.workload, num_prompts=max(1, steps // STEPS_PER_PROMPT))
    return simulate(RunInputs(s.replace(workload=workload), seed=0))


def timed(label: str, fn, results: dict):
    t = time.perf_counter()
    value = fn()
    results[label] = time.perf_counter() - t
    print(f"  {label:<34} {results[label]:7.2f} s", file=sys.stderr)
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    args = ap.parse_args()
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.msgpack")
        trace = timed("simulate (not compared)", lambda: simulated(args.steps), res)
        n_steps = trace.counts().get("sched", 0)
        write_trace(path, trace)
        del trace
        size_mb = os.path.getsize(path) / 1e6
        trace = timed("read_trace (baseline)", lambda: read_trace(path), res)
        view = TraceView(trace)
        timed("extract steps + request lanes", lambda: (view.steps, view.pauses, view.requests), res)
        timed("plot_timeline + savefig png", lambda: plot_timeline(view).savefig(os.path.join(tmp, "t.png")), res)
        timed("plot_timeline 1% window + png", lambda: plot_timeline(
            view, window_ns=(view.end_ns * 0.5, view.end_ns * 0.51)).savefig(os.path.join(tmp, "w.png")), res)
        timed("plot_batches + savefig png", lambda: plot_batches(view).savefig(os.path.join(tmp, "b.png")), res)
        timed("write_chrome (json)", lambda: write_chrome(view, os.path.join(tmp, "c.json")), res)
        chrome_mb = os.path.getsize(os.path.join(tmp, "c.json")) / 1e6
    base = res["read_trace (baseline)"]
    print(f"\n{n_steps} steps, {len(trace.records)} records, {size_mb:.1f} MB trace, "
          f"{chrome_mb:.1f} MB chrome json")
    print("| stage | seconds | × read_trace |\n|---|---:|---:|")
    for label, sec in res.items():
        if label != "simulate (not compared)":
            print(f"| {label} | {sec:.2f} | {sec / base:.2f} |")


if __name__ == "__main__":
    main()
