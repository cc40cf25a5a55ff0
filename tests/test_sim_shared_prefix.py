"""Workload structure (issue 13): a system prefix shared by every prompt, so prefix-cache hits cross groups."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO

from tracesim.check import Policy, check_trace
from tracesim.format import StepScheduled
from tracesim.format.digest import records_digest
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import ScenarioError, load_scenario, scenario_from_dict

BASE = load_scenario(REPO / "scenarios" / "default.toml")


def _with(shared: int, **loop):
    s = BASE.replace(workload=dataclasses.replace(BASE.workload, shared_prefix_len=shared))
    return s.replace(loop=dataclasses.replace(s.loop, **loop)) if loop else s


def _first_admission_hits(trace) -> int:
    """Prefix-cache tokens hit by each group's first sample at its first schedule: only another group's blocks
    can serve those."""
    seen, hits = set(), 0
    for step in trace.of(StepScheduled):
        for q in step.reqs:
            if q.req_id.endswith("-s0") and q.req_id not in seen:
                seen.add(q.req_id)
                hits += q.cached_tokens
    return hits


def test_shared_prefix_makes_hits_cross_groups_and_changes_the_trace():
    plain, shared = simulate(RunInputs(_with(0), 0)), simulate(RunInputs(_with(48), 0))
    assert _first_admission_hits(plain) == 0
    assert _first_admission_hits(shared) >= 48 * 10  # 48 tokens = 3 full blocks of 16, for most groups
    assert records_digest(plain.records) != records_digest(shared.records)


@pytest.mark.parametrize("seed", range(4))
def test_stale_cross_group_hits_are_caught_and_the_correct_loop_is_clean(seed):
    """Keep-mode updates without a cache reset: a new group's prompt reuses the shared prefix computed by the
    old weights. Only the shared prefix makes those prefix hits; the correct loop (abort + reset) is clean."""
    kinds = lambda t: {("prefix" if "prefix-cached" in v.message else "running")
                       for v in check_trace(t, Policy(allow_stale_running_kv=True, allow_mixed_versions=True,
                                                      max_version_lag=None), only=["no_stale_kv"]).violations}
    assert kinds(simulate(RunInputs(_with(0, pause_mode="keep", clear_cache=False), seed))) == set()
    assert kinds(simulate(RunInputs(_with(48, pause_mode="keep", clear_cache=False), seed))) == {"prefix"}
    assert check_trace(simulate(RunInputs(_with(48), seed))).violations == []


@pytest.mark.vllm
def test_backends_agree_record_for_record_with_a_shared_prefix():
    pytest.importorskip("vllm")
    from tracesim.sim.backends import compare_backends, run_both

    both = run_both(scenario=_with(48, pause_mode="keep", clear_cache=False))
    assert compare_backends(both["native"], both["vllm"]).records_identical
    assert _first_admission_hits(both["vllm"]) > 0


def test_shared_prefix_longer_than_the_shortest_prompt_is_refused():
    with pytest.raises(ScenarioError, match=r"x\.toml: \[workload\]\.shared_prefix_len: must be in \[0, the "
                                            r"shortest prompt \(64\)\], got 65"):
        scenario_from_dict({"workload": {"prompt_len": [64, 128], "shared_prefix_len": 65}}, "x.toml")
