"""n > 1 sampling as one parent request (``[workload] sampling = "parent"``, tracesim/sim/parent.py): vLLM's
frontend fans a parent out into children ``"{index}_{parent}"`` that the engine runs independently; with
FINAL_ONLY output the client gets every child's output when the last one finishes; aborting the parent
aborts its children; an aborted child leaves the parent completing with an aborted member, and
``[loop] aborted_child`` says what the loop does with it (a loop that trains the rest or loses the group is
reported)."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import REPO
from helpers import both_backends, records_of
from tracesim.check import check_trace
from tracesim.format import (
    Aborted, OutputDelivered, ParentAdded, RequestAdded, SampleDropped, StepScheduled, StepUpdated,
)
from tracesim.sim import perturb as P
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import ScenarioError, load_scenario, scenario_from_dict

DEFAULT = load_scenario(REPO / "scenarios" / "default.toml")


def scenario(sampling: str = "parent", aborted_child: str = "handle", num_prompts: int | None = None, **loop):
    wl = dataclasses.replace(DEFAULT.workload, sampling=sampling,
                             num_prompts=num_prompts or DEFAULT.workload.num_prompts)
    return DEFAULT.replace(workload=wl, loop=dataclasses.replace(DEFAULT.loop, aborted_child=aborted_child, **loop))


def invariants(trace) -> set:
    return {v.invariant for v in check_trace(trace).violations}


def child_at(trace, step: int = 40) -> str:
    """A child running at ``step`` (explore's abort targets are the engine's request ids)."""
    return records_of(trace, StepScheduled, step=step)[0].reqs[0].req_id


def finish_ns(trace) -> dict:
    """engine request id -> when the engine finished it (its update's time)."""
    out = {}
    for u in records_of(trace, StepUpdated):
        for o in u.outs:
            if o.finish_reason is not None:
                out[o.req_id] = u.t_ns
    return out


@pytest.fixture(scope="module")
def parent_run():
    return simulate(RunInputs(scenario(), 0))


def test_a_group_is_one_parent_whose_children_run_independently(parent_run):
    t, n = parent_run, DEFAULT.workload.group_size
    parents = records_of(t, ParentAdded)
    assert len(parents) == DEFAULT.workload.num_prompts
    p = parents[0]
    assert p.parent_id == "g0" and p.child_ids == tuple(f"{j}_g0" for j in range(n))
    adds = records_of(t, RequestAdded, side="client", group_id="g0")
    assert [a.req_id for a in adds] == list(p.child_ids) and all(a.group_size == n for a in adds)
    assert {a.req_id for a in records_of(t, RequestAdded, side="engine", group_id="g0")} == set(p.child_ids)
    # uneven finish: the engine finishes a parent's children at different times
    ends = finish_ns(t)
    assert any(len({ends[c] for c in q.child_ids if c in ends}) > 1 for q in parents)
    assert not records_of(simulate(RunInputs(scenario("independent"), 0)), ParentAdded)


def test_final_only_children_outputs_reach_the_client_together_after_the_last_finishes(parent_run):
    t = parent_run
    ends = finish_ns(t)
    delivered = records_of(t, OutputDelivered)
    assert all(d.finished and d.start_idx == 0 for d in delivered)  # no partial frames: FINAL_ONLY
    by_req = {d.req_id: d for d in delivered}
    whole = [q for q in records_of(t, ParentAdded) if all(c in by_req for c in q.child_ids)]
    assert whole
    for q in whole:
        times = {by_req[c].t_ns for c in q.child_ids}
        assert len(times) == 1 and min(times) >= max(ends[c] for c in q.child_ids)
    independent = simulate(RunInputs(scenario("independent"), 0))
    assert any(not d.finished for d in records_of(independent, OutputDelivered))


@pytest.mark.parametrize("seed", range(20))
def test_parent_sampling_is_clean(seed):
    t = simulate(RunInputs(scenario(), seed))
    assert check_trace(t).violations == [], seed


def test_aborting_one_child_completes_the_parent_with_an_aborted_member(parent_run):
    child = child_at(parent_run)
    parent = child.split("_", 1)[1]
    t = simulate(RunInputs(scenario(), 0, (P.Abort("sched:40", child),)))
    assert records_of(t, Aborted, side="client")[0].req_ids == (child,)
    q = records_of(t, ParentAdded, parent_id=parent)[0]
    delivered = {d.req_id: d for d in records_of(t, OutputDelivered) if d.req_id in q.child_ids}
    assert set(delivered) == set(q.child_ids)  # the parent completed
    assert delivered[child].finish_reason == "abort"
    assert all(delivered[c].finish_reason != "abort" for c in q.child_ids if c != child)
    assert len({d.t_ns for d in delivered.values()}) == 1
    # the loop's on_abort (drop) drops the group: accounted, clean
    assert records_of(t, SampleDropped, group_id=parent) and invariants(t) == set()


def test_aborting_the_parent_aborts_every_running_child(parent_run):
    parent = child_at(parent_run).split("_", 1)[1]
    t = simulate(RunInputs(scenario(), 0, (P.Abort("sched:40", parent),)))
    q = records_of(t, ParentAdded, parent_id=parent)[0]
    client = records_of(t, Aborted, side="client")[0].req_ids
    assert client and set(client) <= set(q.child_ids) and len(client) > 1
    engine = {i for a in records_of(t, Aborted, side="engine") for i in a.req_ids}
    assert set(client) <= engine
    assert invariants(t) == set()


@pytest.mark.parametrize("seed", range(6))
def test_a_loop_that_trains_the_rest_or_loses_the_group_is_reported(seed):
    base = simulate(RunInputs(scenario(), seed))
    abort = (P.Abort("sched:40", child_at(base)),)
    assert invariants(simulate(RunInputs(scenario(), seed, abort))) == set()
    rest = invariants(simulate(RunInputs(scenario(aborted_child="train_rest"), seed, abort)))
    assert "groups_whole_and_consistent" in rest, seed
    lost = check_trace(simulate(RunInputs(scenario(aborted_child="forget"), seed, abort))).violations
    ends = [v for v in lost if v.invariant == "sample_ends_exactly_once"]
    assert ends, seed
    # the checker binds the children to their parent (ParentAdded) and says so
    parent = abort[0].req.split("_", 1)[1]
    assert any(f"a child of request {parent}," in v.message for v in ends), seed


def test_explore_can_inject_the_loops_reaction(parent_run):
    child = child_at(parent_run)
    t = simulate(RunInputs(scenario(), 0, (P.Abort("sched:40", child), P.parse("set(aborted_child=forget)"))))
    assert "sample_ends_exactly_once" in invariants(t)


@pytest.mark.parametrize("table, field", [
    ({"workload": {"sampling": "n"}}, r"\[workload\]\.sampling: 'n' is not one of independent, parent"),
    ({"loop": {"aborted_child": "retry"}}, r"\[loop\]\.aborted_child: 'retry' is not one of handle, train_rest"),
])
def test_bad_settings_are_one_clear_error(table, field):
    with pytest.raises(ScenarioError, match=r"x\.toml: " + field):
        scenario_from_dict(table, "x.toml")


@pytest.mark.vllm
@pytest.mark.parametrize("abort_child", [False, True])
def test_vllm_backend_agrees_with_native(abort_child):
    s = scenario(num_prompts=12)
    perturbations = (P.Abort("sched:40", child_at(simulate(RunInputs(s, 0)))),) if abort_child else ()
    both, agreement = both_backends(s, 0, perturbations)
    assert agreement.records_identical, agreement
    assert both["vllm"].of(ParentAdded)
