"""Behaviour logprobs stamped with the version that computed them: the simulator's ``behaviour_logprobs``
setting, the behaviour_logprobs_from_sampling_policy invariant, and exploration finding the timings that break
it."""

from __future__ import annotations

import dataclasses

from check_builder import correct_group
from conftest import REPO
from tracesim.check import check_trace
from tracesim.check.behaviour import BEHAVIOUR
from tracesim.explore import Base, explore
from tracesim.format import OutputDelivered, SampleLogprobs, TrainerConsumed
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import ScenarioError, load_scenario, scenario_from_dict

import pytest

SCENARIO = REPO / "scenarios" / "behaviour-recompute.toml"
INFLIGHT = str(REPO / "policies" / "inflight-updates.toml")


def _run(mode: str, seed: int = 0, **loop):
    s = load_scenario(SCENARIO)
    return simulate(RunInputs(s.replace(loop=dataclasses.replace(s.loop, behaviour_logprobs=mode, **loop)), seed))


def test_the_setting_changes_the_trace_and_none_leaves_it_as_it_was():
    none, engine, recompute = _run("none"), _run("engine"), _run("recompute")
    assert not none.of(SampleLogprobs)
    others = [r for r in engine.records if not isinstance(r, SampleLogprobs)]
    assert others == none.records == [r for r in recompute.records if not isinstance(r, SampleLogprobs)]
    consumed = {s.req_id for tc in none.of(TrainerConsumed) for s in tc.samples}
    spans = {d.req_id: d.spans for d in none.of(OutputDelivered) if d.finished}
    rec = recompute.of(SampleLogprobs)
    assert sorted(r.req_id for r in rec) == sorted(consumed)  # one per consumed sample, from token 0
    assert all(r.role == "behaviour" and r.side == "trainer" and r.start_idx == 0 and r.logprobs is None for r in rec)
    eng = engine.of(SampleLogprobs)
    assert sorted((r.req_id, r.start_idx, r.version) for r in eng) == sorted(
        (rid, sp.start, sp.version) for rid in consumed for sp in spans[rid])  # one per version span


def test_recompute_stamps_the_trainers_version_at_consumption():
    trace = _run("recompute", update_every=1)
    version_at = {s.req_id: tc.trainer_version for tc in trace.of(TrainerConsumed) for s in tc.samples}
    assert {r.version for r in trace.of(SampleLogprobs)} == set(version_at.values())
    assert all(r.version == version_at[r.req_id] for r in trace.of(SampleLogprobs))


def test_a_bad_setting_is_one_clear_error():
    with pytest.raises(ScenarioError, match=r"\[loop\]\.behaviour_logprobs: 'old' is not one of none, engine, recompute"):
        scenario_from_dict({"loop": {"behaviour_logprobs": "old"}}, "x.toml")


# --- the invariant on hand-made traces ------------------------------------------------------------------


def _behaviour(run, req_id, version, start=0, logprobs=None):
    run.emit(SampleLogprobs(run.at(), req_id, "behaviour", "trainer", start, None, logprobs, version))


def test_logprobs_of_the_sampling_version_are_clean():
    run = correct_group(n_tokens=4)
    _behaviour(run, "g0s0", 0)
    _behaviour(run, "g0s1", 0, logprobs=(-1.0, -2.0, -0.5, -0.1))
    report = check_trace(run.trace(), only=[BEHAVIOUR])
    assert report.checked == [BEHAVIOUR] and report.violations == []


def test_logprobs_of_another_version_name_the_token_range_and_the_distance():
    run = correct_group(n_tokens=4)
    t = run.at()
    run.emit(SampleLogprobs(t, "g0s0", "behaviour", "trainer", 0, None, None, 0))
    run.emit(SampleLogprobs(t, "g0s0", "behaviour", "trainer", 2, None, None, 2))  # tokens 2..4 by version 2
    (v,) = check_trace(run.trace(), only=[BEHAVIOUR]).violations
    assert v.invariant == BEHAVIOUR and v.req_id == "g0s0"
    assert "tokens 2..4 of g0s0 were computed by version 2, but version 0 sampled them (2 versions newer)" in v.message
    assert "recomputed" in v.cause and {e.kind for e in v.events} >= {"logprobs", "consume"}


def test_without_behaviour_logprobs_it_is_not_checkable():
    run = correct_group()
    while any(isinstance(r, SampleLogprobs) and r.role == "behaviour" for r in run.records):
        run.remove(SampleLogprobs, lambda r: r.role == "behaviour")  # the builder's run records them
    run.emit(SampleLogprobs(run.at(), "g0s0", "returned", "client", 0, None, (-1.0,), 0))
    assert "role \"behaviour\"" in check_trace(run.trace(), only=[BEHAVIOUR]).not_checkable[BEHAVIOUR]


# --- exploration ----------------------------------------------------------------------------------------


def test_explore_finds_recomputed_logprobs_of_a_stale_sample():
    base = Base("scenario", str(SCENARIO), policy=INFLIGHT)
    assert check_trace(_run("recompute")).violations == []  # clean at default timings
    result = explore(base, budget=48, seed=0, workers=1)
    (f,) = [f for f in result.findings if f.signature.invariant == BEHAVIOUR]
    assert f.minimal.perturbations and f.deterministic is True


def test_engine_returned_logprobs_stay_clean_over_many_seeds_and_perturbations(tmp_path):
    twin = tmp_path / "behaviour-engine.toml"
    twin.write_text(SCENARIO.read_text().replace('behaviour_logprobs = "recompute"', 'behaviour_logprobs = "engine"'))
    for seed in range(12):
        trace = _run("engine", seed)
        assert trace.of(SampleLogprobs) and BEHAVIOUR in check_trace(trace).checked
        assert check_trace(trace).violations == [], seed
    result = explore(Base("scenario", str(twin), policy=INFLIGHT), budget=96, seed=0, workers=1,
                     shrink_failures=False)
    assert result.runs == 96 and result.findings == [], [str(f.signature) for f in result.findings]
