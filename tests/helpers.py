"""Small builders and runners shared by the tests."""

from __future__ import annotations

from tracesim.format import ProcessInfo, make_header


def header(source: str = "synthetic", *, host: str = "h", pid: int = 1, role: str = "test",
           mono_anchor_ns: int = 0, wall_anchor_ns: int = 0, **kw) -> Header:
    proc = ProcessInfo(role, host, pid, 0, mono_anchor_ns, wall_anchor_ns)
    return make_header(source, (proc,), **kw)


def simulated(scenario: str = "keep-bad-bindings.toml", seed: int = 0, **workload):
    """A simulated trace of a bundled scenario (default: a deliberately wrong RL loop that checkers flag),
    optionally with workload fields changed (e.g. ``num_prompts=120`` for a longer run)."""
    import dataclasses
    from pathlib import Path

    from tracesim.sim.run import RunInputs, simulate
    from tracesim.sim.scenario import load_scenario

    s = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / scenario)
    if workload:
        s = s.replace(workload=dataclasses.replace(s.workload, **workload))
    return simulate(RunInputs(s, seed=seed))


def finish_counts(trace) -> dict:
    """How many times each request ended in the engine: a finish reason in an update, or an abort."""
    from tracesim.format import Aborted, StepUpdated

    ends: dict = {}
    for r in trace.records:
        if isinstance(r, StepUpdated):
            for o in r.outs:
                if o.finish_reason is not None:
                    ends[o.req_id] = ends.get(o.req_id, 0) + 1
        elif isinstance(r, Aborted):
            for req_id in r.req_ids:
                ends[req_id] = ends.get(req_id, 0) + 1
    return ends


def both_backends(scenario, seed: int = 0, perturbations=()) -> tuple:
    """``(traces, agreement)``: ``scenario`` simulated with the native model and with vLLM's own scheduler
    (``{"native": trace, "vllm": trace}``) and how far they agree; skips where vLLM cannot be driven."""
    import dataclasses

    import pytest

    pytest.importorskip("vllm")
    from tracesim.sim.backends import compare_backends
    from tracesim.sim.run import RunInputs, simulate
    from tracesim.sim.vllm_scheduler import vllm_available

    if not vllm_available():
        pytest.skip("vllm is installed but tracesim's standalone driver cannot import it")
    traces = {b: simulate(RunInputs(scenario.replace(engine=dataclasses.replace(scenario.engine,
                                                                                 scheduler_backend=b)),
                                    seed, tuple(perturbations)))
              for b in ("native", "vllm")}
    return traces, compare_backends(traces["native"], traces["vllm"])


def with_settings(scenario, engine=None, workload=None, **loop):
    """``scenario`` with some ``[engine]`` / ``[workload]`` fields (dicts) and ``[loop]`` fields changed."""
    import dataclasses

    return scenario.replace(engine=dataclasses.replace(scenario.engine, **(engine or {})),
                            workload=dataclasses.replace(scenario.workload, **(workload or {})),
                            loop=dataclasses.replace(scenario.loop, **loop))


def run(scenario, seed: int = 0, perturbations=()):
    """The simulated trace of ``scenario`` (with ``perturbations``)."""
    from tracesim.sim.run import RunInputs, simulate

    return simulate(RunInputs(scenario, seed=seed, perturbations=tuple(perturbations)))


def records_of(trace, kind, **match) -> list:
    """The records of type ``kind`` whose fields equal ``match``."""
    return [r for r in trace.records if type(r) is kind and all(getattr(r, k) == v for k, v in match.items())]


def in_build(script: str, pure: bool) -> dict:
    """The JSON that ``script`` prints, run in a fresh process with the repository root as its argument, in the
    plain-Python build (``pure``) or the compiled one (a process imports one build of the simulator)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "TRACESIM_PURE_PYTHON": "1" if pure else "0"}
    run = subprocess.run([sys.executable, "-c", script, str(REPO)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)
