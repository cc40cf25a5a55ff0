"""A run: (base scenario or recorded trace, seed, perturbations) -> simulated Trace, a pure function.

Nothing here reads a clock, a hostname or a pid; every random draw comes from ``random.Random`` seeded
with derived seeds, and SimPy orders simultaneous events by (time, priority, insertion sequence). The same
inputs therefore give the same records and, written out, the same bytes.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import simpy

from tracesim.format.engine_settings import EngineSettings
from tracesim.format.header import make_header
from tracesim.format.records import ProcessInfo
from tracesim.format.trace import Trace
from tracesim.gcpause import cyclic_gc_paused
from tracesim.sim import simloop
from tracesim.sim.engine import Engine
from tracesim.sim.hooks import Hooks
from tracesim.sim.rollout import Rollout
from tracesim.sim.scenario import EngineConfig, Scenario, validate_dp_pd
from tracesim.sim.timing import ModelTiming
from tracesim.sim.trainer import RewardPool, Trainer

SIM_PROCESS = ProcessInfo("sim", "sim", 0)
MAX_VIRTUAL_NS = 10 ** 15  # ~11.6 virtual days: a run that has not ended by then is stuck


@dataclass(frozen=True)
class RunInputs:
    """What a simulated run is a function of. ``perturbations``: an ordered tuple of ``perturb.Perturbation``
    values, applied where the model reads its inputs (``hooks.py``); the header keeps their text forms."""

    scenario: Scenario
    seed: int = 0
    perturbations: tuple = ()
    base_trace: str | None = None  # path of the recorded trace a replay was built from, for the header

    def header_inputs(self) -> dict:
        d = {"scenario": self.scenario.to_dict(), "perturbations": [str(p) for p in self.perturbations]}
        if self.base_trace is not None:
            d["base_trace"] = self.base_trace
        return d


class StuckRunError(RuntimeError):
    """The run did not finish within MAX_VIRTUAL_NS of virtual time (a deadlock in the modelled loop).
    ``trace``: what was recorded until then (a client that waits forever is a finding the checkers can name)."""

    def __init__(self, message: str, trace=None):
        super().__init__(message)
        self.trace = trace


# EngineConfig field -> its key in the header's engine settings, where the two differ (the header speaks
# vLLM's names: format/engine_settings.py); replay reads a header back through the same table.
HEADER_KEYS = {"reserve_full_sequence": "scheduler_reserve_full_isl"}


def engine_settings_of(cfg: EngineConfig) -> EngineSettings:
    """The header's engine settings of a simulated engine: every EngineConfig field, under its header key."""
    return EngineSettings({HEADER_KEYS.get(f.name, f.name): getattr(cfg, f.name)
                           for f in dataclasses.fields(cfg)})


def sim_header(inputs: RunInputs, engine: EngineConfig, processes: tuple = (SIM_PROCESS,)):
    return make_header("sim", processes, engine_config=engine_settings_of(engine), seed=inputs.seed,
                       inputs=inputs.header_inputs(), created_wall_ns=0)


@cyclic_gc_paused()  # see tracesim/gcpause.py: about 40% of a run otherwise
def simulate(inputs: RunInputs, progress=None) -> Trace:
    """Run the scenario's RL loop to completion; return the trace. Raises StuckRunError."""
    hooks = Hooks(inputs.perturbations)
    s = hooks.scenario(inputs.scenario)
    if hooks:  # a switch may combine DP / P/D with a setting they do not run with: refuse, do not ignore
        validate_dp_pd(s, "scenario with perturbations")
    env = simloop.Environment()
    records: list = []
    emit = records.append
    rng_work = random.Random(f"{inputs.seed}:workload")
    rng_reward = random.Random(f"{inputs.seed}:reward")
    procs, processes = None, (SIM_PROCESS,)
    if s.engine.data_parallel_size > 1:  # ranks of their own (dp.py): every record carries its process
        from tracesim.sim.dp import build_dp
        engine, emit, procs, processes = build_dp(env, s, hooks.timing(ModelTiming(s.steptime, s.engine)), records,
                                                  progress, random.Random(f"{inputs.seed}:faults"))
    else:
        cls = Engine
        if s.engine.pd_transfer_us > 0:  # the decode instance of a prefill/decode pair (pd.py)
            from tracesim.sim.pd import PDEngine as cls
        engine = cls(env, s.engine, hooks.timing(ModelTiming(s.steptime, s.engine)), emit, None, progress,
                     fault_rng=random.Random(f"{inputs.seed}:faults"))
    done = env.event()
    trainer: Trainer
    rollout = Rollout(env, s, engine, emit, rng_work, lambda smp: pool.put(smp),
                      lambda g: trainer.group_dropped(g))
    trainer = Trainer(env, s, engine, rollout, emit, done, reserve=lambda: _reserve(records, procs))
    pool = RewardPool(env, s.loop, emit, rng_reward, rollout, trainer.rewarded)
    if hooks:
        hooks.install(env, engine, rollout, trainer, pool)
    env.process(engine.run())
    env.process(rollout.run())
    env.process(trainer.run())
    env.run(until=simpy.AnyOf(env, [done, env.timeout(MAX_VIRTUAL_NS)]))
    if None in records:  # a place reserved for a record that never came (an update cut short by the end)
        if procs is not None:
            procs = [p for r, p in zip(records, procs) if r is not None]
        records = [r for r in records if r is not None]
    trace = Trace(sim_header(inputs, s.engine, processes), records, procs or [], None)
    if not done.triggered:  # the trace so far comes with the error: what the loop did before it hung
        raise StuckRunError(f"run did not finish within {MAX_VIRTUAL_NS} virtual ns (stuck at step {engine.step})",
                            trace)
    return trace


def _reserve(records: list, procs: list | None = None):
    """Keep the next place in ``records`` (and ``procs``, the process of each record, when the run has
    several) for a record known later; return the function that fills it."""
    at = len(records)
    records.append(None)
    if procs is not None:
        procs.append(0)

    def fill(record) -> None:
        records[at] = record
    return fill
