"""Off-policy cancellation at the update ([loop] cancel_off_policy, sim/cancel.py): prime-rl cancels groups that
fell too far behind while the server is paused for the update. On its own the cancellation drops whole groups
(clean); with P/D KV transfers in flight on an engine that frees a request in transfer at its abort
(vllm#37837), it is prime-rl#2841: a transfer completion for a freed request."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import REPO
from tracesim.check import check_trace, load_policy
from tracesim.format import Aborted, KvTransfer
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import ScenarioError, load_scenario

PRIME = load_scenario(REPO / "scenarios" / "profiles" / "prime-rl.toml")
POLICY = load_policy(REPO / "policies" / "inflight-updates.toml")
HELD = "kv_transfer_completes_for_held_request"


def variant(cancel: bool, lag: int = 0, transfer_us: int = 0, fault: float = 0.0):
    return PRIME.replace(loop=dataclasses.replace(PRIME.loop, cancel_off_policy=cancel, max_version_lag=lag),
                         engine=dataclasses.replace(PRIME.engine, pd_transfer_us=transfer_us,
                                                    fault_pd_free_in_transfer=fault))


def cancelled(trace) -> list:
    return [r for r in trace.of(Aborted) if r.side == "client" and r.reason == "client"]


@pytest.mark.parametrize("seed", range(6))
def test_cancellation_drops_stale_groups_and_stays_clean(seed):
    trace = simulate(RunInputs(variant(True), seed))
    assert check_trace(trace, POLICY).violations == []
    base = simulate(RunInputs(variant(False), seed))
    assert cancelled(base) == []
    if seed < 2:  # the setting acts: groups older than the lag bound are aborted by the client at the update
        assert cancelled(trace), seed


def test_cancellation_happens_inside_the_updates_pause():
    trace = simulate(RunInputs(variant(True), 0))
    pauses = [(p.t_ns, p.end_ns) for p in trace.records if type(p).__name__ == "Paused" and p.side == "client"]
    resumes = [r.t_ns for r in trace.records if type(r).__name__ == "Resumed" and r.side == "client"]
    for a in cancelled(trace):
        assert any(end <= a.t_ns <= resume for (_, end), resume in zip(pauses, resumes)), a


@pytest.mark.parametrize("seed", range(4))
def test_cancelling_requests_in_kv_transfer_on_a_freeing_engine_is_prime_rl_2841(seed):
    bug = simulate(RunInputs(variant(True, transfer_us=100_000, fault=1.0), seed))
    assert bug.of(KvTransfer) and cancelled(bug)
    assert HELD in {v.invariant for v in check_trace(bug, POLICY).violations}, seed
    # the engine fault alone is inert here: a keep pause aborts nothing, only the loop's cancellation does
    quiet = simulate(RunInputs(variant(False, transfer_us=100_000, fault=1.0), seed))
    assert HELD not in {v.invariant for v in check_trace(quiet, POLICY).violations}
    # vLLM with delay_free_blocks holds the blocks of a request aborted in transfer: the same loop is clean
    fixed = simulate(RunInputs(variant(True, transfer_us=100_000, fault=0.0), seed))
    assert HELD not in {v.invariant for v in check_trace(fixed, POLICY).violations}


def test_cancellation_needs_a_lag_bound():
    with pytest.raises(ScenarioError, match=r"\[loop\].cancel_off_policy.*max_version_lag"):
        from tracesim.sim.scenario import _validate

        _validate(variant(True, lag=-1), "x.toml")
