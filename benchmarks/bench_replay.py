"""Replay speed: simulated steps/s and events/s on a trace of >= 100k steps, beside a bare SimPy loop that
processes the same number of events in the same run (the ratio is what to compare across machines).

    .venv/bin/python benchmarks/bench_replay.py [--steps 100000] [--batch 32] [--compare-plain]

The input trace is made by the simulator itself (a long decode-heavy scenario whose KV cache never binds:
``--batch`` requests in flight, groups of up to 8 samples, 30-40 output tokens each), then replayed with
exact timing. ``--steps`` is the minimum number of steps of the input trace. The replay is timed as a
whole (reading the recorded inputs and timings out of the trace included). It runs whichever build of the
simulator is in use (compiled by setup.py, or the plain-Python sources; printed). ``--compare-plain`` also
replays the same trace with the plain-Python build (``TRACESIM_PURE_PYTHON=1``, in a subprocess: a process
imports one build) and checks that both gave the same records.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import time

import msgpack
import simpy

from tracesim.format.records import StepScheduled
from tracesim.sim import _compiled
from tracesim.sim.replay import replay
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import EngineConfig, LoopPolicy, Scenario, Workload

STEPS_PER_GROUP = 34  # a group occupies the engine for about its output length (30-40) plus its prefill


def make_trace(steps: int, batch: int = 32):
    """A simulated trace of at least ``steps`` steps with about ``batch`` requests per step."""
    group_size = min(8, batch)
    concurrency = max(1, batch // group_size)
    while True:
        prompts = max(1, -(-steps * concurrency // STEPS_PER_GROUP))
        s = Scenario(workload=Workload(num_prompts=prompts, group_size=group_size, prompt_len=(32, 64),
                                       output_len=(30, 40), max_tokens=48, concurrency=concurrency, submit_gap_us=0),
                     engine=EngineConfig(num_gpu_blocks=4096), loop=LoopPolicy(update_every=0, reward_us=(100, 200)))
        trace = simulate(RunInputs(s, seed=0))
        made = trace.counts()["sched"]
        if made >= steps:
            return trace
        steps += steps - made + 1  # too few (short outputs): ask for the shortfall on top


def bare_simpy(n_events: int) -> float:
    env = simpy.Environment()

    def proc():
        for _ in range(n_events):
            yield env.timeout(1)

    env.process(proc())
    t = time.perf_counter()
    env.run()
    return time.perf_counter() - t


def records_digest(trace) -> str:
    """sha256 of every packed record: equal digests, byte-identical traces."""
    h, packer = hashlib.sha256(), msgpack.Packer()
    for r in trace.records:
        h.update(packer.pack(r))
    return h.hexdigest()


_PLAIN = """
import pickle, sys, time
from tracesim.sim import _compiled
from tracesim.sim.replay import replay
sys.path.insert(0, sys.argv[2])
from bench_replay import records_digest
with open(sys.argv[1], "rb") as f:
    trace = pickle.load(f)
t = time.perf_counter()
out = replay(trace)
print(time.perf_counter() - t, records_digest(out), _compiled.STATUS.compiled)
"""


def replay_plain(trace) -> tuple:
    """(seconds, records digest) of replaying ``trace`` with the plain-Python build, in a subprocess."""
    with tempfile.NamedTemporaryFile(suffix=".pickle") as f:
        pickle.dump(trace, f)
        f.flush()
        run = subprocess.run([sys.executable, "-c", _PLAIN, f.name, os.path.dirname(os.path.abspath(__file__))],
                             env={**os.environ, "TRACESIM_PURE_PYTHON": "1"}, capture_output=True, text=True,
                             check=True)
    seconds, digest, compiled = run.stdout.split()
    assert compiled == "False"
    return float(seconds), digest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000, help="minimum steps of the input trace")
    ap.add_argument("--batch", type=int, default=32, help="requests in flight (about the requests per step)")
    ap.add_argument("--compare-plain", action="store_true",
                    help="also replay with the plain-Python build and compare speed and records")
    args = ap.parse_args()
    build = "compiled" if _compiled.STATUS.compiled else "plain Python"
    print(f"simulator build: {build} ({_compiled.STATUS.reason})")
    t = time.perf_counter()
    trace = make_trace(args.steps, args.batch)
    gen_s = time.perf_counter() - t
    steps = trace.counts()["sched"]
    req_steps = sum(len(r.reqs) for r in trace.records if type(r) is StepScheduled)
    t = time.perf_counter()
    out = replay(trace)
    replay_s = time.perf_counter() - t
    n_events = len(out.records)
    bare_s = bare_simpy(n_events)
    print(f"input trace: {steps} steps, {req_steps / steps:.1f} requests/step, {len(trace.records)} records "
          f"(simulated in {gen_s:.1f} s: {steps / gen_s:,.0f} steps/s)")
    print(f"replay: {replay_s:.2f} s, {steps / replay_s:,.0f} steps/s, {n_events / replay_s:,.0f} records/s, "
          f"{replay_s / req_steps * 1e6:.2f} us per request-step")
    print(f"bare SimPy loop, {n_events} timeouts: {bare_s:.2f} s, {n_events / bare_s:,.0f} events/s")
    print(f"replay / bare SimPy time ratio: {replay_s / bare_s:.1f}x")
    if args.compare_plain:
        plain_s, digest = replay_plain(trace)
        same = "identical records" if digest == records_digest(out) else "DIFFERENT RECORDS"
        print(f"plain-Python build: {plain_s:.2f} s, {steps / plain_s:,.0f} steps/s; this build is "
              f"{plain_s / replay_s:.2f}x faster ({same})")


if __name__ == "__main__":
    main()
