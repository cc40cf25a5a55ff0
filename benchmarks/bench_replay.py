"""Replay speed: simulated steps/s and events/s on a trace of >= 100k steps, beside a bare SimPy loop that
processes the same number of events in the same process (the ratio is what to compare across machines).

    .venv/bin/python benchmarks/bench_replay.py [--steps 100000] [--batch 32] [--compare-plain] [--in-process]
                                                [--cli] [--keep FILE]

The input trace is made by the simulator itself (a long decode-heavy scenario whose KV cache never binds:
``--batch`` requests in flight, groups of up to 8 samples, 30-40 output tokens each) and written to a trace
file. It is then replayed with exact timing as ``tracesim replay`` does it: a fresh process reads the file
(timed apart) and runs ``replay()``, timed as a whole (reading the recorded inputs and timings out of the
trace included). ``--steps`` is the minimum number of steps of the input trace.

The replay runs whichever build of the simulator is in use (compiled by setup.py, or the plain-Python
sources; printed). ``--compare-plain`` also replays the file with the plain-Python build
(``TRACESIM_PURE_PYTHON=1``) and checks that both builds gave the same records. ``--in-process`` also
replays in the generating process right after the generation, whose freed objects leave the heap fragmented
(slower: shown for comparison).

``--cli`` also runs ``tracesim replay TRACE -o OUT`` as a user does (target, issue 15: >= 10k steps/s end to
end): wall time from process start to exit (imports, reading, loop-policy inference, the replay, writing the
simulated trace and comparing it with the recording), and a breakdown of the same phases timed in one
process. ``--keep FILE`` keeps the input trace there (and reuses it when it exists).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import simpy

from tracesim.format import read_trace, write_trace
from tracesim.format.digest import records_digest
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


def timed_replay(trace) -> dict:
    """Replay ``trace`` and time it, then a bare SimPy loop of as many events as the replay wrote records."""
    t = time.perf_counter()
    out = replay(trace)
    replay_s = time.perf_counter() - t
    n_events = len(out.records)
    return {"replay_s": replay_s, "records": n_events, "bare_s": bare_simpy(n_events),
            "digest": records_digest(out.records), "compiled": _compiled.STATUS.compiled}


_FRESH = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from bench_replay import timed_replay
from tracesim.format import read_trace
t = time.perf_counter()
trace = read_trace(sys.argv[1])
read_s = time.perf_counter() - t
print(json.dumps({**timed_replay(trace), "read_s": read_s}))
"""


def replay_fresh(path: str, plain: bool) -> dict:
    """``timed_replay`` of the trace file ``path`` in a fresh process; ``plain``: the plain-Python build."""
    env = {**os.environ, "TRACESIM_PURE_PYTHON": "1" if plain else os.environ.get("TRACESIM_PURE_PYTHON", "0")}
    run = subprocess.run([sys.executable, "-c", _FRESH, path, os.path.dirname(os.path.abspath(__file__))],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def report(label: str, r: dict, steps: int, req_steps: int) -> None:
    s = r["replay_s"]
    build = "compiled" if r["compiled"] else "plain Python"
    read = f", trace read in {r['read_s']:.1f} s" if "read_s" in r else ""
    print(f"{label} ({build} build{read}):")
    print(f"  replay: {s:.2f} s, {steps / s:,.0f} steps/s, {r['records'] / s:,.0f} records/s, "
          f"{s / req_steps * 1e6:.2f} us per request-step")
    print(f"  bare SimPy loop, {r['records']} timeouts: {r['bare_s']:.2f} s, "
          f"{r['records'] / r['bare_s']:,.0f} events/s; replay / bare SimPy time ratio: {s / r['bare_s']:.1f}x")


_PHASES = r"""
import json, sys, time
t, c = time.perf_counter(), time.thread_time()  # the command's thread: the arena helper runs beside it
from tracesim.bulkmem import populate_arenas
from tracesim.gcpause import cyclic_gc_paused
populate_arenas()  # as the CLI does for a bulk command
from tracesim.format import read_trace, write_trace
from tracesim.sim.fidelity import compare
from tracesim.sim.recorded_loop import resolve_loop_policy
from tracesim.sim.replay import replay
out = {}
def lap(name):  # (wall s, CPU s): on a shared machine the CPU time is what moves less between runs
    global t, c
    now, cnow = time.perf_counter(), time.thread_time(); out[name] = (now - t, cnow - c); t, c = now, cnow
lap("imports")
with cyclic_gc_paused():  # as the CLI runs a command
    trace = read_trace(sys.argv[1]); lap("read")
    policy, _lines = resolve_loop_policy(trace, None); lap("loop policy")
    sim = replay(trace, loop_policy=policy); lap("replay")
    write_trace(sys.argv[2], sim); lap("write")
    compare(trace, sim); lap("compare")
print(json.dumps(out))
"""


def cli_replay(path: str, steps: int) -> None:
    """``tracesim replay`` as a user runs it (wall time of the whole process), then its phases."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.msgpack")
        # `python -m tracesim` as the console script runs it, with the tracesim this benchmark imports
        t = time.perf_counter()
        before = os.times()
        subprocess.run([sys.executable, "-m", "tracesim", "replay", path, "-o", out, "--no-progress"], check=True,
                       capture_output=True)
        wall_s = time.perf_counter() - t
        after = os.times()
        cpu_s = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        os.sync()  # the command's output written back before the next measured process
        run = subprocess.run([sys.executable, "-c", _PHASES, path, out], check=True, capture_output=True, text=True)
        phases = json.loads(run.stdout)
    print(f"tracesim replay, process start to exit: {wall_s:.2f} s = {steps / wall_s:,.0f} steps/s "
          f"(target >= 10,000); CPU {cpu_s:.2f} s = {steps / cpu_s:,.0f} steps per CPU s")
    print("  phases (one process, wall / CPU of its main thread): "
          + ", ".join(f"{k} {w:.2f} / {c:.2f} s" for k, (w, c) in phases.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000, help="minimum steps of the input trace")
    ap.add_argument("--batch", type=int, default=32, help="requests in flight (about the requests per step)")
    ap.add_argument("--compare-plain", action="store_true",
                    help="also replay with the plain-Python build and compare speed and records")
    ap.add_argument("--in-process", action="store_true", help="also replay in the generating process")
    ap.add_argument("--cli", action="store_true", help="also time `tracesim replay` end to end, with its phases")
    ap.add_argument("--keep", help="keep the input trace in this file (reused when it exists)")
    args = ap.parse_args()
    print(f"simulator build here: {'compiled' if _compiled.STATUS.compiled else 'plain Python'} "
          f"({_compiled.STATUS.reason})")
    t = time.perf_counter()
    made = "read"
    if args.keep and os.path.exists(args.keep):
        trace = read_trace(args.keep)
    else:
        made = "simulated"
        trace = make_trace(args.steps, args.batch)
        if args.keep:
            write_trace(args.keep, trace)
    gen_s = time.perf_counter() - t
    steps = trace.counts()["sched"]
    req_steps = sum(len(r.reqs) for r in trace.records if type(r) is StepScheduled)
    print(f"input trace: {steps} steps, {req_steps / steps:.1f} requests/step, {len(trace.records)} records "
          f"({made} in {gen_s:.1f} s: {steps / gen_s:,.0f} steps/s)")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or os.path.join(tmp, "input.msgpack")
        if not args.keep:
            write_trace(path, trace)
        if not args.in_process:  # not held here while the measured processes run (memory is the VM's slow part)
            del trace
        os.sync()  # no write-back of the input running beside the measured processes
        results = {"fresh process": replay_fresh(path, plain=False)}
        if args.cli:
            cli_replay(path, steps)
        if args.compare_plain:
            results["fresh process, plain-Python build"] = replay_fresh(path, plain=True)
    if args.in_process:
        results["in the generating process"] = timed_replay(trace)
    for label, r in results.items():
        report(label, r, steps, req_steps)
    if args.compare_plain:
        fast, plain = results["fresh process"], results["fresh process, plain-Python build"]
        same = "identical records" if fast["digest"] == plain["digest"] else "DIFFERENT RECORDS"
        print(f"plain-Python / this build replay time: {plain['replay_s'] / fast['replay_s']:.2f}x ({same})")


if __name__ == "__main__":
    main()
