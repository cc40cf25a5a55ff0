"""The SimPy model of the engine and the RL loop: determinism, scenarios, and bindings right or wrong."""

from __future__ import annotations

import gc
import io
import os

import pytest

from tracesim.check import check_trace
from tracesim.format import StepScheduled, read_trace, write_trace
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import EngineConfig, LoopPolicy, Scenario, ScenarioError, Workload, load_scenario

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = Workload(num_prompts=12, group_size=3, concurrency=4)


def _bytes(trace, tmp_path, name):
    path = tmp_path / name
    write_trace(path, trace)
    return path.read_bytes()


def test_same_seed_gives_byte_identical_trace(tmp_path):
    s = Scenario(workload=SMALL)
    a = _bytes(simulate(RunInputs(s, seed=7)), tmp_path, "a")
    b = _bytes(simulate(RunInputs(s, seed=7)), tmp_path, "b")
    c = _bytes(simulate(RunInputs(s, seed=8)), tmp_path, "c")
    assert a == b
    assert a != c


def test_a_run_leaves_the_garbage_collector_as_it_found_it():
    # simulate()/replay() turn the cyclic GC off while they run (speed); the caller's setting must survive.
    s = Scenario(workload=SMALL)
    assert gc.isenabled()
    simulate(RunInputs(s, seed=1))
    assert gc.isenabled()
    gc.disable()
    try:
        simulate(RunInputs(s, seed=1))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_async_scheduling_schedules_next_step_before_updating_previous():
    s = Scenario(workload=SMALL, engine=EngineConfig(async_scheduling=True))
    trace = simulate(RunInputs(s, seed=1))
    order = [(r.KIND, r.step) for r in trace.records if r.KIND in ("sched", "upd")]
    assert order.index(("sched", 1)) < order.index(("upd", 0))
    assert any(q.placeholders for r in trace.of(StepScheduled) for q in r.reqs)


def test_small_kv_capacity_forces_preemption_and_recompute():
    s = Scenario(workload=Workload(num_prompts=8, group_size=4, concurrency=8, prompt_len=(100, 200)),
                 engine=EngineConfig(num_gpu_blocks=40))
    trace = simulate(RunInputs(s, seed=3))
    preempted = [rid for r in trace.of(StepScheduled) for rid in r.preempted]
    resumed = [q.req_id for r in trace.of(StepScheduled) for q in r.reqs if q.resumed]
    assert preempted and set(resumed) <= set(preempted) and resumed


def test_group_members_hit_the_prefix_cache():
    trace = simulate(RunInputs(Scenario(workload=SMALL), seed=2))
    assert any(q.cached_tokens > 0 for r in trace.of(StepScheduled) for q in r.reqs)


def test_correct_configuration_produces_no_violation():
    trace = simulate(RunInputs(load_scenario(os.path.join(ROOT, "scenarios", "default.toml")), seed=0))
    report = check_trace(trace)
    assert report.violations == []
    assert trace.counts().get("weights", 0) >= 1  # the run did go through weight updates


@pytest.mark.parametrize("loop, invariant", [
    (LoopPolicy(reward_match="arrival"), "reward_bound_to_own_tokens"),
    (LoopPolicy(pause_mode="keep", clear_cache=False, version_label="admission"), "tokens_from_labelled_version"),
    (LoopPolicy(pause_mode="keep", clear_cache=False), "no_stale_kv"),
])
def test_bad_client_policy_produces_the_violation_it_should(loop, invariant):
    s = Scenario(workload=Workload(num_prompts=16, group_size=4, concurrency=6), loop=loop.__class__(
        **{**loop.__dict__, "update_every": 1}))
    report = check_trace(simulate(RunInputs(s, seed=0)))
    assert invariant in {v.invariant for v in report.violations}


def test_bad_scenario_field_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[loop]\npause_mode = "sometimes"\n')
    with pytest.raises(ScenarioError, match=r"bad.toml.*pause_mode.*sometimes"):
        load_scenario(path)
    path.write_text('[engine]\nblock_size = "big"\n')
    with pytest.raises(ScenarioError, match=r"\[engine\]\.block_size"):
        load_scenario(path)


def test_simulate_cli_writes_a_sim_trace(tmp_path, capsys):
    from tracesim.cli.main import main
    out = tmp_path / "out.msgpack"
    assert main(["simulate", os.path.join(ROOT, "scenarios", "default.toml"), "--seed", "3", "-o", str(out),
                 "--no-progress"]) == 0
    trace = read_trace(out)
    assert trace.header.source == "sim" and trace.header.seed == 3 and trace.header.created_wall_ns == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[nope]\n")
    assert main(["simulate", str(bad), "-o", str(out)]) == 2
    assert "unknown table 'nope'" in capsys.readouterr().err
