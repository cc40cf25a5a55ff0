"""The simulator's event loop (tracesim/sim/simloop.py): SimPy's order of events exactly, with far-future
events kept in a heap of their own."""

from __future__ import annotations

import random

import pytest
import simpy

from helpers import simulated
from tracesim.format.digest import records_digest
from tracesim.sim import simloop
from tracesim.sim.simloop import FAR_NS


def _events_in_order(env_class, seed: int) -> list:
    """What a mix of near and far timeouts, ties of time and priority, process chains, an event failing
    (defused) and a run stopped by an ``until`` event mid-callbacks does, in order."""
    rng = random.Random(seed)
    env = env_class()
    seen = []

    def proc(name, delays):
        for d in delays:
            value = yield env.timeout(d, name)
            seen.append((env.now, "proc", name, value, env.peek()))

    for k in range(40):
        delays = [rng.choice([0, 1, 5, FAR_NS - 1, FAR_NS, FAR_NS + 7, 3 * FAR_NS]) for _ in range(rng.randint(1, 6))]
        env.process(proc(k, delays))
    for k in range(30):  # bare events at equal times: their schedule order decides
        ev = env.timeout(rng.choice([5, FAR_NS, 2 * FAR_NS]), k)
        ev.callbacks.append(lambda e: seen.append((env.now, "cb", e.value)))
        ev.callbacks.append(lambda e: seen.append((env.now, "cb2", e.value)))
    failing = env.event()
    failing.callbacks.append(lambda e: seen.append((env.now, "failed", type(e.value).__name__)))
    failing.defused = True
    env.timeout(FAR_NS).callbacks.append(lambda _e: failing.fail(ValueError("x")))
    stop = env.timeout(2 * FAR_NS, "stop")

    def late_callback():  # added after run() put its stop callback on ``stop``: runs when the run resumes
        yield env.timeout(1)
        stop.callbacks.append(lambda e: seen.append((env.now, "after the stop", e.value)))

    env.process(late_callback())
    seen.append(("run", env.run(until=stop)))
    seen.append(("resumed", env.now))
    env.run()
    seen.append(("end", env.now, env.peek()))
    return seen


@pytest.mark.parametrize("seed", range(5))
def test_events_run_in_simpys_order(seed):
    assert _events_in_order(simloop.Environment, seed) == _events_in_order(simpy.Environment, seed)


def test_far_events_wait_apart_and_an_undefused_failure_still_crashes():
    env = simloop.Environment()
    env.timeout(FAR_NS)
    env.timeout(1)
    assert len(env._far) == 1 and len(env._queue) == 1 and env.peek() == 1
    env.event().fail(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        env.run()
    with pytest.raises(simpy.core.EmptySchedule):
        simloop.Environment().step()


def test_a_simulation_and_a_replay_write_the_same_records_on_either_loop(monkeypatch):
    from tracesim.sim.replay import replay

    trace = simulated(num_prompts=24)  # an RL loop: train steps and rewards scheduled far ahead
    fast = records_digest(trace.records)
    fast_replay = records_digest(replay(trace).records)
    monkeypatch.setattr(simloop, "Environment", simpy.Environment)
    assert records_digest(simulated(num_prompts=24).records) == fast
    assert records_digest(replay(trace).records) == fast_replay
