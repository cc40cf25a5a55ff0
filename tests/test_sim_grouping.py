"""Training groups formed by prompt text or by position (``[loop] group_by``) and duplicate prompts in the
workload (``[workload] duplicate_prompt_share``): tracesim/sim/grouping.py. Grouping by id is clean with
duplicates; grouping by prompt merges duplicates in flight together, grouping by position mixes interleaved
completions, and ``groups_whole_and_consistent`` reports both."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import REPO
from helpers import both_backends, records_of
from tracesim.check import check_trace
from tracesim.format import RequestAdded, StepScheduled, TrainerConsumed
from tracesim.sim import perturb as P
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import ScenarioError, load_scenario, scenario_from_dict

GROUPS = "groups_whole_and_consistent"
DEFAULT = load_scenario(REPO / "scenarios" / "default.toml")


def scenario(share: float = 0.0, group_by: str = "id", num_prompts: int | None = None, **loop):
    wl = dataclasses.replace(DEFAULT.workload, duplicate_prompt_share=share,
                             num_prompts=num_prompts or DEFAULT.workload.num_prompts)
    return DEFAULT.replace(workload=wl, loop=dataclasses.replace(DEFAULT.loop, group_by=group_by, **loop))


def groups_found(trace) -> list:
    return [v for v in check_trace(trace).violations if v.invariant == GROUPS]


def consumed_groups(trace) -> dict:
    """admitted group id -> the group ids its samples were consumed under."""
    admitted = {r.req_id: r.group_id for r in records_of(trace, RequestAdded, side="client")}
    out: dict = {}
    for tc in records_of(trace, TrainerConsumed):
        for s in tc.samples:
            out.setdefault(admitted[s.req_id], set()).add(s.group_id)
    return out


def test_duplicate_prompt_share_gives_groups_the_prompt_of_an_earlier_group():
    base, dup = simulate(RunInputs(scenario(0.0), 0)), simulate(RunInputs(scenario(0.8), 0))

    def prompts(t):  # group -> its prompt digest
        return {r.group_id: r.prompt_digest for r in records_of(t, RequestAdded, side="client")}

    assert len(set(prompts(base).values())) == len(prompts(base))
    assert len(set(prompts(dup).values())) < len(prompts(dup)) * 0.5
    # a duplicate's prompt blocks are the earlier group's: the engine's prefix cache hits across groups
    cached = sum(q.cached_tokens for r in records_of(dup, StepScheduled) for q in r.reqs)
    assert cached > sum(q.cached_tokens for r in records_of(base, StepScheduled) for q in r.reqs)


@pytest.mark.parametrize("seed", range(20))
def test_grouping_by_id_is_clean_with_duplicate_prompts(seed):
    t = simulate(RunInputs(scenario(0.8), seed))
    assert check_trace(t).violations == [], seed
    assert all(v == {g} for g, v in consumed_groups(t).items())


@pytest.mark.parametrize("seed", range(20))
def test_grouping_by_prompt_is_clean_without_duplicates(seed):
    t = simulate(RunInputs(scenario(0.0, "prompt"), seed))
    assert check_trace(t).violations == [], seed


def test_grouping_by_prompt_merges_duplicates_in_flight_together():
    fired = 0
    for seed in range(10):
        t = simulate(RunInputs(scenario(0.8, "prompt"), seed))
        merged = {g for g, v in consumed_groups(t).items() if v != {g}}
        found = groups_found(t)
        assert bool(merged) == bool(found), seed
        if found:
            fired += 1
            assert any("as a member of group" in v.message for v in found)
            # a merged training group has more samples than a group: two groups' under one id
            sizes: dict = {}
            for tc in records_of(t, TrainerConsumed):
                for s in tc.samples:
                    sizes[(tc.train_step, s.group_id)] = sizes.get((tc.train_step, s.group_id), 0) + 1
            assert max(sizes.values()) >= 2 * DEFAULT.workload.group_size
    assert fired >= 9


@pytest.mark.parametrize("seed", range(10))
def test_grouping_by_position_mixes_interleaved_completions(seed):
    t = simulate(RunInputs(scenario(0.0, "position"), seed))
    found = groups_found(t)
    assert found and any("as a member of group" in v.message for v in found), seed
    # every sample is still consumed once: only the grouping is wrong
    consumed = [s.req_id for tc in records_of(t, TrainerConsumed) for s in tc.samples]
    assert len(consumed) == len(set(consumed))


def test_explore_can_inject_the_grouping():
    t = simulate(RunInputs(scenario(0.0, num_prompts=12), 1, (P.parse("set(group_by=position)"),)))
    assert groups_found(t)
    assert t.header.inputs["perturbations"] == ["set(group_by=position)"]


@pytest.mark.parametrize("table, field", [
    ({"workload": {"duplicate_prompt_share": 1.5}}, r"\[workload\]\.duplicate_prompt_share: a share"),
    ({"loop": {"group_by": "text"}}, r"\[loop\]\.group_by: 'text' is not one of id, prompt, position"),
])
def test_bad_settings_are_one_clear_error(table, field):
    with pytest.raises(ScenarioError, match=r"x\.toml: " + field):
        scenario_from_dict(table, "x.toml")


@pytest.mark.vllm
@pytest.mark.parametrize("group_by", ["prompt", "position"])
def test_vllm_backend_agrees_with_native(group_by):
    both, agreement = both_backends(scenario(0.8, group_by, num_prompts=12))
    assert agreement.records_identical, agreement
    assert groups_found(both["native"]) and groups_found(both["vllm"])
