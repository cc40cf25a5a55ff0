"""Data-parallel engine cores (docs/simulator.md "Data-parallel engines", ``tracesim/sim/dp.py``): ranks recorded
as processes of their own, least-loaded routing, dummy batches while any rank has work, a pause that completes per
rank, and the bug settings: a loop that writes weights after the first rank's pause
(``no_weight_write_during_forward``) and tpu-inference#3362's lost abort outputs (``sample_ends_exactly_once``),
each with a correct twin clean over 20 seeds."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest

import tracesim.sim.dp as dp
from helpers import run, with_settings
from tracesim.check import Policy, check_trace
from tracesim.format import RequestAdded, StepScheduled
from tracesim.format.digest import records_digest
from tracesim.sim.perturb import parse
from tracesim.sim.run import StuckRunError
from tracesim.sim.scenario import EngineConfig, LoopPolicy, Scenario, ScenarioError, Workload, scenario_from_dict

WRITE = "no_weight_write_during_forward"
ENDS = "sample_ends_exactly_once"
# Async scheduling: a rank that aborted its requests at the pause still runs the step it scheduled ahead.
DP = Scenario(workload=Workload(num_prompts=16, group_size=4, concurrency=6),
              engine=EngineConfig(async_scheduling=True, data_parallel_size=2))
SEEDS = range(20)
# The loop consumes groups from before an update without a lag bound; the rest of the strict policy stands.
POLICY = Policy(max_version_lag=None)


def _engine_records(trace, kind):
    return [(p, r) for p, r in trace.with_procs() if type(r) is kind and getattr(r, "side", "engine") == "engine"]


def test_each_rank_is_a_process_of_its_own_with_its_own_steps():
    trace = run(with_settings(DP, engine={"data_parallel_size": 3}))
    roles = [(p.role, p.rank) for p in trace.header.processes]
    assert roles == [("sim", 0), ("engine-core", 0), ("engine-core", 1), ("engine-core", 2)]
    assert len(trace.procs) == len(trace.records)
    steps_by_proc: dict = {}
    for p, r in _engine_records(trace, StepScheduled):
        steps_by_proc.setdefault(p, []).append(r.step)
    assert sorted(steps_by_proc) == [1, 2, 3]
    for steps in steps_by_proc.values():  # each rank numbers its own steps 0, 1, 2, ...
        assert steps == list(range(len(steps)))
    # every request lives on one rank: its engine add and every step that schedules it share the process
    rank_of = {r.req_id: p for p, r in _engine_records(trace, RequestAdded)}
    for p, r in _engine_records(trace, StepScheduled):
        for q in r.reqs:
            assert rank_of[q.req_id] == p
    assert check_trace(trace, POLICY).violated() == []


def test_one_rank_is_todays_single_engine():
    trace = run(DP.replace(engine=dataclasses.replace(DP.engine, data_parallel_size=1)))
    assert len(trace.header.processes) == 1 and trace.procs == []


def test_requests_are_routed_to_the_least_loaded_rank():
    trace = run(with_settings(DP, engine={"data_parallel_size": 4}))
    adds = Counter(p for p, _r in _engine_records(trace, RequestAdded))
    assert sorted(adds) == [1, 2, 3, 4]
    assert max(adds.values()) - min(adds.values()) <= 4, adds  # balanced, not all on rank 0
    # the first burst (ties everywhere) rotates over the ranks as vLLM's scan start does
    first = [p for p, _r in _engine_records(trace, RequestAdded)][:4]
    assert sorted(first) == [1, 2, 3, 4]


def test_an_idle_rank_runs_dummy_batches_while_another_has_work(monkeypatch):
    built = []
    real = dp.build_dp

    def capture(*args, **kwargs):
        out = real(*args, **kwargs)
        built.append(out[0])
        return out
    monkeypatch.setattr(dp, "build_dp", capture)
    # one group of one sample: one rank has all the work, the other only dummy batches
    run(with_settings(DP, engine=None).replace(workload=Workload(num_prompts=1, group_size=1, concurrency=1)))
    engines = built[0]
    busy = [e.rank for e in engines.ranks if e.step]
    assert len(busy) == 1
    idle = 1 - busy[0]
    assert engines.dummy_batches[idle] > 0 and engines.ranks[idle].step == 0
    assert engines.dummy_batches[busy[0]] <= 2  # at most around its pause: it had real work to step


def test_correct_twin_is_clean_over_seeds():
    for mode in ("abort", "wait"):
        for seed in SEEDS if mode == "abort" else range(5):
            trace = run(with_settings(DP, pause_mode=mode), seed)
            assert check_trace(trace, POLICY).violated() == [], (mode, seed)


def test_writing_after_the_first_ranks_pause_overlaps_a_forward_pass():
    fired = 0
    for seed in SEEDS:
        twin, bug = run(DP, seed), run(with_settings(DP, dp_pause_wait="first"), seed)
        assert WRITE not in check_trace(twin, POLICY).violated(), seed
        violated = check_trace(bug, POLICY).violated()
        fired += WRITE in violated
        assert set(violated) <= {WRITE}, (seed, violated)
    # it needs a rank whose forward pass is still running when another's pause completes: most updates
    assert fired >= len(SEEDS) // 2, fired


def test_lost_abort_outputs_leave_samples_unaccounted():
    for seed in SEEDS:
        with pytest.raises(StuckRunError) as info:  # the client waits forever for the aborted samples
            run(with_settings(DP, engine={"fault_dp_finish_no_output": 1.0}), seed)
        report = check_trace(info.value.trace, POLICY)
        assert ENDS in report.violated(), seed
        aborted = [r for r in info.value.trace.records if r.KIND == "abort" and r.side == "engine"]
        assert aborted, seed


def test_a_fault_probability_strikes_some_ranks_pauses():
    outcomes = set()
    for seed in range(6):
        try:
            trace = run(with_settings(DP, engine={"fault_dp_finish_no_output": 0.5}), seed)
            outcomes.add(ENDS in check_trace(trace, POLICY).violated())
        except StuckRunError:
            outcomes.add("stuck")
    assert "stuck" in outcomes and len(outcomes) > 1, outcomes


def test_same_seed_same_bytes():
    for s in (DP, with_settings(DP, dp_pause_wait="first")):
        a, b = run(s, 3), run(s, 3)
        assert records_digest(a.records) == records_digest(b.records) and a.procs == b.procs
    assert records_digest(run(DP, 3).records) != records_digest(run(DP, 4).records)


def test_settings_are_perturbations_that_change_the_run():
    base = DP.replace(engine=dataclasses.replace(DP.engine, data_parallel_size=1))
    plain = run(base)
    flipped = run(base, perturbations=[parse("set(data_parallel_size=2)")])
    assert len(flipped.header.processes) == 3 and records_digest(flipped.records) != records_digest(plain.records)
    first = [run(DP, seed, perturbations=[parse("set(dp_pause_wait=first)")]) for seed in range(1, 4)]
    assert any(WRITE in check_trace(t, POLICY).violated() for t in first)


@pytest.mark.parametrize("engine, loop, field", [
    ({"data_parallel_size": 0}, {}, "[engine].data_parallel_size"),
    ({"fault_dp_finish_no_output": 1.0}, {}, "[engine].fault_dp_finish_no_output"),
    ({"fault_dp_finish_no_output": 2.0, "data_parallel_size": 2}, {}, "[engine].fault_dp_finish_no_output"),
    ({"data_parallel_size": 2, "scheduler_backend": "vllm"}, {}, "[engine].data_parallel_size"),
    ({"data_parallel_size": 2}, {"dp_pause_wait": "some"}, "[loop].dp_pause_wait"),
])
def test_bad_settings_name_the_field(engine, loop, field):
    d = Scenario().to_dict()
    d["engine"].update(engine)
    d["loop"].update(loop)
    with pytest.raises(ScenarioError, match="^" + re.escape(f"x.toml: {field}")):
        scenario_from_dict(d, "x.toml")


def test_loop_default_is_vllms_client():
    assert LoopPolicy().dp_pause_wait == "all" and EngineConfig().data_parallel_size == 1


def test_cli_simulate_writes_the_records_of_a_hung_run(tmp_path, capsys):
    from tracesim.cli.main import main
    from tracesim.format import read_trace

    scenario = tmp_path / "dp-lost.toml"
    scenario.write_text("[workload]\nnum_prompts = 16\nconcurrency = 6\n"
                        "[engine]\nasync_scheduling = true\ndata_parallel_size = 2\nfault_dp_finish_no_output = 1.0\n")
    out = tmp_path / "t.msgpack"
    assert main(["simulate", str(scenario), "-o", str(out), "--no-progress"]) == 1
    assert "the run hung" in capsys.readouterr().err
    trace = read_trace(out)
    assert len(trace.header.processes) == 3 and ENDS in check_trace(trace, POLICY).violated()


def test_a_switch_that_combines_badly_is_refused():
    with pytest.raises(ScenarioError, match="pd_transfer_us"):
        run(DP, perturbations=[parse("set(pd_transfer_us=1000)")])


def test_replay_refuses_data_parallel_ranks(tmp_path, capsys):
    from tracesim.cli.main import main

    scenario = tmp_path / "dp.toml"
    scenario.write_text("[engine]\ndata_parallel_size = 2\n")
    code = main(["replay", "traces/synthetic-small.msgpack", "--scenario", str(scenario), "-o",
                 str(tmp_path / "r.msgpack"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "[engine].data_parallel_size: replay runs one engine core" in err and "Traceback" not in err


def test_a_reset_voids_only_its_own_ranks_steps_in_flight():
    # every rank takes the loop's reset_prefix_cache(reset_running=True); the checker pairs each rank's reset with
    # that rank's steps only (a reset on rank 1 says nothing about a step of rank 0 in flight)
    perturbations = [parse("reset_cache(at=sched:30,running=true)"), parse("abort(at=sched:20,req=g3-s0,scope=group)")]
    for seed in range(3):
        trace = run(DP, seed, perturbations)
        resets = [(p, r) for p, r in trace.with_procs() if r.KIND == "cache_reset" and r.reset_running]
        assert {p for p, _r in resets} == {1, 2}, seed
        assert check_trace(trace, POLICY).violated() == [], seed
