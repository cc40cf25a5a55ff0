"""Prefill/decode KV transfer (docs/simulator.md "Prefill/decode KV transfer", ``tracesim/sim/pd.py``): each
prompt's KV arrives by transfer, an abort during the transfer holds the request's blocks until its completion,
and the fault of vllm#37837 / prime-rl#2841 (the request freed at the abort, the completion coming for a freed
request) fires ``kv_transfer_completes_for_held_request``; the correct twin is clean over 20 seeds. Also the
checker on hand-built traces."""

from __future__ import annotations

import dataclasses
import re

import pytest

from check_builder import Run
from conftest import REPO
from helpers import run, with_settings
from tracesim.check import Policy, check_trace
from tracesim.format import Aborted, CacheReset, KvTransfer, Paused, RequestAdded, StepScheduled
from tracesim.format.digest import records_digest
from tracesim.sim.perturb import parse
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import EngineConfig, Scenario, ScenarioError, Workload, scenario_from_dict

HELD = "kv_transfer_completes_for_held_request"
# A transfer long enough that the groups submitted before each update are still receiving at its pause.
PD = Scenario(workload=Workload(num_prompts=32), engine=EngineConfig(pd_transfer_us=100_000))
SEEDS = range(20)
POLICY = Policy(max_version_lag=None)  # the loop sets no lag bound; the rest of the strict policy stands


def _transfers(trace, phase):
    return [r for r in trace.of(KvTransfer) if r.phase == phase]


def test_prompt_kv_arrives_by_transfer_and_is_not_recomputed():
    trace = run(PD)
    starts, dones = _transfers(trace, "start"), _transfers(trace, "done")
    adds = [r for r in trace.of(RequestAdded) if r.side == "engine"]
    assert len(starts) == len(adds) and dones
    start_of = {r.req_ids[0]: r.t_ns for r in starts}
    done_of = {r.req_ids[0]: r.t_ns for r in dones}
    first: dict = {}
    for rec in trace.of(StepScheduled):
        for q in rec.reqs:
            first.setdefault(q.req_id, (rec.t_ns, q))
    for req_id, (t_ns, q) in first.items():
        # applied at the core's next action after the transfer time; scheduled only once the KV is there
        assert t_ns >= done_of[req_id] >= start_of[req_id] + 100_000_000
        assert q.prefill_tokens <= PD.engine.block_size and q.cached_tokens > 0  # the partial last block only
    plain = run(with_settings(PD, engine={"pd_transfer_us": 0}))
    assert not plain.of(KvTransfer)
    assert check_trace(trace, POLICY).violated() == []


def test_an_abort_in_transfer_holds_the_blocks_until_the_completion():
    trace = run(PD)
    held = _transfers(trace, "held")
    assert held  # the abort-mode pause finished requests whose KV was still arriving
    for h in held:
        abort = next(a for a in trace.of(Aborted) if a.side == "engine" and set(h.req_ids) <= set(a.req_ids))
        assert abort.t_ns == h.t_ns
    # their completion still comes (unless the run ended first), after the abort, and frees them
    done_of = {r: d for d in _transfers(trace, "done") for r in d.req_ids}
    held_ids = {r: h for h in held for r in h.req_ids}
    assert set(held_ids) & set(done_of)
    for r in set(held_ids) & set(done_of):
        assert done_of[r].t_ns > held_ids[r].t_ns
    # blocks held by transfers in flight: the pause's cache reset is refused (vLLM refuses while blocks are used)
    assert any(not c.ok for c in trace.of(CacheReset))


def test_correct_twin_is_clean_over_seeds():
    for seed in SEEDS:
        assert check_trace(run(PD, seed), POLICY).violated() == [], seed


def test_freeing_at_the_abort_gives_a_completion_for_a_freed_request():
    for seed in SEEDS:
        bug = run(with_settings(PD, engine={"fault_pd_free_in_transfer": 1.0}), seed)
        violations = [v for v in check_trace(bug, POLICY).violations if v.invariant == HELD]
        assert violations, seed
        assert "a completion for a freed request" in violations[0].message
        assert set(check_trace(bug, POLICY).violated()) == {HELD}, seed


def test_cancelling_in_transfer_during_a_keep_pause():
    # prime-rl#2841: the loop cancels requests (here one group, at the first pause) while the engine is
    # paused with mode "keep"; their completions are applied after the resume (a paused core does not step)
    keep = with_settings(PD, pause_mode="keep")
    for seed in range(6):
        group = _receiving_at_first_pause(run(keep, seed))
        cancel = [parse(f"abort(at=pause:1,req={group}-s0,scope=group)")]
        twin = run(keep, seed, cancel)
        assert HELD not in check_trace(twin, POLICY).violated(), seed
        assert any(f"{group}-s0" in h.req_ids for h in _transfers(twin, "held")), seed
        bug = run(with_settings(keep, engine={"fault_pd_free_in_transfer": 1.0}), seed, cancel)
        fired = {v.req_id for v in check_trace(bug, POLICY).violations if v.invariant == HELD}
        assert fired == {f"{group}-s{i}" for i in range(4)}, seed


def _receiving_at_first_pause(trace) -> str:
    """The group of the first request whose KV transfer is in flight when the engine takes its first pause."""
    receiving: dict = {}
    for rec in trace.records:
        if type(rec) is KvTransfer:
            for r in rec.req_ids:
                if rec.phase == "start":
                    receiving[r] = True
                elif rec.phase == "done":
                    receiving.pop(r, None)
        elif type(rec) is Paused and rec.side == "engine":
            return next(iter(receiving)).rsplit("-", 1)[0]
    raise AssertionError("no pause")


def test_same_seed_same_bytes_and_the_settings_change_the_run():
    a, b = run(PD, 5), run(PD, 5)
    assert records_digest(a.records) == records_digest(b.records)
    base = with_settings(PD, engine={"pd_transfer_us": 0})
    flipped = run(base, perturbations=[parse("set(pd_transfer_us=100000)")])
    assert records_digest(flipped.records) == records_digest(run(PD).records)  # as if the scenario said so
    faulty = run(PD, perturbations=[parse("set(fault_pd_free_in_transfer=1.0)")])
    assert HELD in check_trace(faulty, POLICY).violated()


@pytest.mark.parametrize("engine, field", [
    ({"pd_transfer_us": -1}, "[engine].pd_transfer_us"),
    ({"fault_pd_free_in_transfer": 1.0}, "[engine].fault_pd_free_in_transfer"),
    ({"pd_transfer_us": 10, "data_parallel_size": 2}, "[engine].pd_transfer_us"),
    ({"pd_transfer_us": 10, "scheduler_backend": "vllm"}, "[engine].pd_transfer_us"),
    ({"pd_transfer_us": 10, "loop": {"reset_prefix_cache": True, "on_reset_refused": "retry"}},
     "[loop].on_reset_refused"),
])
def test_bad_settings_name_the_field(engine, field):
    d = Scenario().to_dict()
    d["loop"].update(engine.pop("loop", {}))
    d["engine"].update(engine)
    with pytest.raises(ScenarioError, match="^" + re.escape(f"x.toml: {field}")):
        scenario_from_dict(d, "x.toml")


# --- the checker on hand-built traces ----------------------------------------------------------------------


def _in_transfer(abort_held: bool | None):
    """One request whose KV arrives by transfer; ``abort_held``: None, no abort; True, aborted during the
    transfer with its blocks held; False, aborted and freed (no "held" record)."""
    built = Run()
    built.admit("r0")
    built.emit(KvTransfer(built.at(), ("r0",), "start"))
    if abort_held is not None:
        built.abort(["r0"], side="engine")
        if abort_held:
            built.emit(KvTransfer(built.t_ns, ("r0",), "held"))
    built.emit(KvTransfer(built.at(1000), ("r0",), "done"))
    if abort_held is None:
        built.generate(["r0"])
    return built.trace()


def _held_violations(trace):
    report = check_trace(trace, Policy(samples_must_end=False))
    return [v for v in report.violations if v.invariant == HELD], report


def test_checker_accepts_a_completion_for_a_live_or_held_request():
    for held in (None, True):
        found, report = _held_violations(_in_transfer(held))
        assert found == [] and HELD in report.checked


def test_checker_names_a_completion_for_a_freed_request():
    (v,), _ = _held_violations(_in_transfer(False))
    assert v.req_id == "r0" and "freed r0 at its abort" in v.message
    assert [e.kind for e in v.events] == ["kv_transfer", "abort", "kv_transfer"]


def test_checker_names_a_completion_without_a_transfer():
    run = Run()
    run.admit("r0")
    run.emit(KvTransfer(run.at(), ("r0",), "done"))
    (v,), _ = _held_violations(run.trace())
    assert "without one in flight" in v.message


def test_checker_holds_trivially_without_transfers():
    run = Run()
    run.admit("r0")
    run.generate(["r0"])
    report = check_trace(run.trace())
    assert HELD in report.checked and HELD not in report.not_checkable


def test_replay_refuses_a_kv_transfer_switch():
    from tracesim.format import read_trace
    from tracesim.sim.replay import replay

    with pytest.raises(ScenarioError, match=r"\[engine\]\.pd_transfer_us: replay runs without KV transfers"):
        replay(read_trace("traces/synthetic-small.msgpack"), perturbations=(parse("set(pd_transfer_us=1000)"),))


def test_cache_clearing_pause_with_transfers_in_flight_is_a_refused_reset_the_checkers_name():
    # docs/simulator.md "Engine behaviours a loop must know": vLLM 0.32 cannot empty the cache while prompt KV
    # is still arriving (it raises); the model records the refused reset and the stale prefix hits follow
    from tracesim.check import load_policy
    from tracesim.sim.scenario import load_scenario

    path = REPO / "scenarios" / "profiles" / "verl.toml"
    s = load_scenario(path)
    policy = load_policy(REPO / re.search(r"^# policy: (\S+)$", path.read_text(), re.M).group(1))
    assert check_trace(simulate(RunInputs(s, 0)), policy).violations == []
    pd = simulate(RunInputs(s.replace(engine=dataclasses.replace(s.engine, pd_transfer_us=50_000)), 0))
    assert any(not c.ok and c.reset_running for c in pd.of(CacheReset))
    stale = [v for v in check_trace(pd, policy).violations if v.invariant == "no_stale_kv"]
    assert stale and all("refused" in v.cause for v in stale)
