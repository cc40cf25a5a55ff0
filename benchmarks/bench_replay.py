"""Replay speed: simulated steps/s and events/s on a trace of >= 100k steps, beside a bare SimPy loop that
processes the same number of events in the same run (the ratio is what to compare across machines).

    .venv/bin/python benchmarks/bench_replay.py [--steps 100000]

The input trace is made by the simulator itself (a long decode-heavy scenario, one group in flight at a
time so the KV cache never binds), then replayed with exact timing.
"""

from __future__ import annotations

import argparse
import time

import simpy

from tracesim.sim.replay import replay
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import EngineConfig, LoopPolicy, Scenario, Workload


def make_trace(steps: int):
    prompts = max(1, steps // 40)
    s = Scenario(workload=Workload(num_prompts=prompts, group_size=8, prompt_len=(32, 64), output_len=(30, 40),
                                   max_tokens=48, concurrency=4, submit_gap_us=0),
                 engine=EngineConfig(num_gpu_blocks=4096), loop=LoopPolicy(update_every=0, reward_us=(100, 200)))
    return simulate(RunInputs(s, seed=0))


def bare_simpy(n_events: int) -> float:
    env = simpy.Environment()

    def proc():
        for _ in range(n_events):
            yield env.timeout(1)

    env.process(proc())
    t = time.perf_counter()
    env.run()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000)
    args = ap.parse_args()
    t = time.perf_counter()
    trace = make_trace(args.steps)
    gen_s = time.perf_counter() - t
    steps = trace.counts()["sched"]
    t = time.perf_counter()
    out = replay(trace)
    replay_s = time.perf_counter() - t
    n_events = len(out.records)
    bare_s = bare_simpy(n_events)
    print(f"input trace: {steps} steps, {len(trace.records)} records (simulated in {gen_s:.1f} s)")
    print(f"replay: {replay_s:.2f} s, {steps / replay_s:,.0f} steps/s, {n_events / replay_s:,.0f} records/s")
    print(f"bare SimPy loop, {n_events} timeouts: {bare_s:.2f} s, {n_events / bare_s:,.0f} events/s")
    print(f"replay / bare SimPy time ratio: {replay_s / bare_s:.1f}x")


if __name__ == "__main__":
    main()
