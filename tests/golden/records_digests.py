"""Digest of the records (header left out) of every simulated and replayed run the byte-identity test covers.

``python tests/golden/records_digests.py`` prints them as JSON; ``records.json`` beside this file holds the
values taken before the typed layer (issue 15) changed how records are built, read and configured. Headers
are left out on purpose: their engine configuration was allowed to change (one key vocabulary); every event
record must stay byte for byte what it was. Entries of a bundled recording change only when the recording
itself is replaced (issue 16 re-recorded ``vllm-async-standalone`` and added ``vllm-async-engine``; every other
entry was unchanged when they were regenerated).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys

from tracesim.format import read_trace
from tracesim.format.digest import records_digest
from tracesim.sim.perturb import parse_list
from tracesim.sim.replay import replay
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import EngineConfig, LoopPolicy, Scenario, Workload, load_scenario

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digest(trace) -> str:
    return records_digest(trace.records)


def _with_backend(scenario: Scenario, backend: str) -> Scenario:
    return dataclasses.replace(scenario, engine=dataclasses.replace(scenario.engine, scheduler_backend=backend))


def code_scenarios() -> dict:
    """Scenarios written in code that go through async scheduling, preemption, pauses in every mode, aborts
    with requeue, stale frames and chunked prefill (tests/test_sim_compiled.py runs them too)."""
    w = Workload(num_prompts=16, group_size=4, concurrency=5)
    long = Workload(num_prompts=12, group_size=4, concurrency=8, prompt_len=(100, 200))
    return {
        "sync": Scenario(workload=w),
        "async": Scenario(workload=w, engine=EngineConfig(async_scheduling=True)),
        "preempt-async": Scenario(workload=long, engine=EngineConfig(num_gpu_blocks=40, async_scheduling=True)),
        "keep": Scenario(workload=w, loop=LoopPolicy(pause_mode="keep", clear_cache=False)),
        "wait-requeue": Scenario(workload=w, loop=LoopPolicy(pause_mode="wait", on_abort="requeue",
                                                             version_label="first_token")),
        "stale-frames": Scenario(workload=w, engine=EngineConfig(async_scheduling=True,
                                                                 discard_stale_frames=False),
                                 loop=LoopPolicy(on_abort="requeue", retry_ids="reuse")),
        "chunked": Scenario(workload=Workload(num_prompts=8, group_size=2, concurrency=4, prompt_len=(300, 900)),
                            engine=EngineConfig(long_prefill_token_threshold=128, watermark=0.05)),
    }


def digests(backends=("native", "vllm")) -> dict:
    scenarios = code_scenarios()
    for path in sorted(glob.glob(os.path.join(REPO, "scenarios", "*.toml"))):
        scenarios[os.path.basename(path)] = load_scenario(path)
    perturbed = parse_list("step_time(step=20,factor=1.7,count=30); delay_delivery(step=40,ms=40); "
                           "abort(at=sched:60,req=*,scope=group); reward_delay(req=*,ms=25); "
                           "write_late(update=1,ms=30); retry(at=upd:80,req=*)")
    out: dict = {}
    for name, scenario in scenarios.items():
        for backend in backends:
            s = _with_backend(scenario, backend)
            trace = simulate(RunInputs(s, seed=3))
            out[f"simulate:{backend}:{name}"] = _digest(trace)
            out[f"replay:{backend}:{name}"] = _digest(replay(trace, scheduler_backend=backend))
            out[f"perturbed:{backend}:{name}"] = _digest(simulate(RunInputs(s, seed=5, perturbations=perturbed)))
    for path in sorted(glob.glob(os.path.join(REPO, "traces", "*.msgpack"))):
        trace = read_trace(path)
        for backend in backends:
            out[f"replay:{backend}:{os.path.basename(path)}"] = _digest(replay(trace, scheduler_backend=backend))
        out["fitted:" + os.path.basename(path)] = _digest(replay(trace, timing="fitted"))
    return out


if __name__ == "__main__":
    print(json.dumps(digests(tuple(sys.argv[1:]) or ("native", "vllm")), indent=1, sort_keys=True))
