"""Speed of the two scheduling backends on the same run: ``python benchmarks/bench_backends.py [--prompts N]``.

Simulates ``scenarios/default.toml`` and ``scenarios/keep-bad-bindings.toml`` (num_prompts raised to N) with
the native model and with vLLM's own scheduler, checks that the traces are identical, and prints steps per
second of each backend and their ratio (measured in the same run; vLLM's one-off construction is excluded by
a warm-up run)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from tracesim.format.records import StepScheduled
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import load_scenario

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(s, backend):
    s = s.replace(engine=dataclasses.replace(s.engine, scheduler_backend=backend))
    t = time.perf_counter()
    trace = simulate(RunInputs(s, 0))
    return trace, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    args = ap.parse_args()
    for name in ("default.toml", "keep-bad-bindings.toml"):
        s = load_scenario(os.path.join(ROOT, "scenarios", name))
        s = s.replace(workload=dataclasses.replace(s.workload, num_prompts=args.prompts))
        _run(s.replace(workload=dataclasses.replace(s.workload, num_prompts=1)), "vllm")  # warm-up: imports
        native, t_native = _run(s, "native")
        vllm, t_vllm = _run(s, "vllm")
        steps = len(native.of(StepScheduled))
        print(f"{name}: {steps} steps, identical={native.records == vllm.records}, "
              f"native {steps / t_native:,.0f} steps/s, vllm {steps / t_vllm:,.0f} steps/s, "
              f"vllm/native time {t_vllm / t_native:.1f}x")


if __name__ == "__main__":
    main()
