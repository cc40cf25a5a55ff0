"""The update's pause with the loop's own abort by id list (``[loop] abort_ids``, tracesim/sim/abort_ids.py):
ids the engine does not know abort nothing and the requests generate through the weight write
(NovaSky-AI/SkyRL#1243); the loop's own external ids abort them all and the run is clean."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import REPO
from helpers import both_backends
from tracesim.check import check_trace, load_policy
from tracesim.format import Aborted, OutputDelivered, RequestAdded
from tracesim.sim import perturb as P
from tracesim.sim.abort_ids import internal_id
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import ScenarioError, load_scenario, scenario_from_dict

PROFILE = REPO / "scenarios" / "profiles" / "skyrl-abort-noop.toml"
STRICT = load_policy(REPO / "policies" / "strict.toml")
BUG = load_scenario(PROFILE)


def with_ids(scenario, abort_ids: str):
    return scenario.replace(loop=dataclasses.replace(scenario.loop, abort_ids=abort_ids))


def of(trace, kind, **match):
    return [r for r in trace.records if type(r) is kind and all(getattr(r, k) == v for k, v in match.items())]


def invariants(trace) -> set:
    return {v.invariant for v in check_trace(trace, STRICT).violations}


def test_internal_ids_abort_nothing_and_requests_generate_through_the_update():
    assert BUG.loop.abort_ids == "internal" and BUG.loop.pause_mode == "abort" and BUG.loop.wait_for_drain
    for seed in range(4):
        t = simulate(RunInputs(BUG, seed))
        client = of(t, Aborted, side="client", reason="pause")
        assert client, seed
        admitted = {r.req_id for r in of(t, RequestAdded, side="engine")}
        # the loop named every live request, by ids the engine never admitted: the engine aborted none
        assert all(i not in admitted for a in client for i in a.req_ids)
        assert {internal_id(i.rsplit("-", 1)[0]) for a in client for i in a.req_ids} == \
            {i for a in client for i in a.req_ids}
        assert not of(t, Aborted, side="engine")
        assert not [d for d in of(t, OutputDelivered) if d.finish_reason == "abort"]
        found = invariants(t)
        assert {"no_weight_write_during_forward", "tokens_from_labelled_version"} <= found, (seed, found)


@pytest.mark.parametrize("seed", range(20))
def test_external_ids_abort_every_live_request_and_the_run_is_clean(seed):
    t = simulate(RunInputs(with_ids(BUG, "external"), seed))
    client = [i for a in of(t, Aborted, side="client", reason="pause") for i in a.req_ids]
    engine = [i for a in of(t, Aborted, side="engine") for i in a.req_ids]
    assert client and set(engine) <= set(client)  # the engine aborted the loop's ids (those still live there)
    assert check_trace(t, STRICT).violations == [], seed


def test_the_engine_default_is_vllms_own_abort_pause():
    t = simulate(RunInputs(with_ids(BUG, "engine"), 0))
    assert not of(t, Aborted, side="client") and of(t, Aborted, side="engine", reason="pause")
    assert invariants(t) == set()


def test_explore_can_inject_the_setting():
    base = with_ids(BUG, "external")
    t = simulate(RunInputs(base, 0, (P.parse("set(abort_ids=internal)"),)))
    assert "no_weight_write_during_forward" in invariants(t)
    with pytest.raises(P.PerturbationError, match="abort_ids"):
        P.parse("set(abort_ids=sometimes)")


def test_a_bad_value_is_one_clear_error():
    with pytest.raises(ScenarioError, match=r"\[loop\]\.abort_ids: 'client' is not one of engine, external, internal"):
        scenario_from_dict({"loop": {"abort_ids": "client"}}, "x.toml")


@pytest.mark.vllm
@pytest.mark.parametrize("abort_ids", ["external", "internal"])
def test_vllm_backend_agrees_with_native(abort_ids):
    s = with_ids(BUG, abort_ids)
    both, agreement = both_backends(s.replace(workload=dataclasses.replace(s.workload, num_prompts=12)))
    assert agreement.records_identical, agreement
    assert of(both["vllm"], Aborted, side="client", reason="pause")
