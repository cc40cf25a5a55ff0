"""Policy granularity (issue 13): a loop may accept stale KV of running requests across an update while still
refusing stale prefix-cache hits (and the other way round), and may state that a pause must keep its samples."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import TRACES

from tracesim.check import Policy, check_trace, policy_from_dict
from tracesim.check.policy import PolicyError
from tracesim.format import read_trace
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import load_scenario

from conftest import REPO


def _kv_kinds(trace, policy) -> dict:
    """Stale-KV violations by kind: "running" (own KV across an update) or "prefix" (a hit on old blocks)."""
    kinds: dict = {}
    for v in check_trace(trace, policy, only=["no_stale_kv"]).violations:
        kind = "prefix" if "prefix-cached" in v.message else "running" if "own KV" in v.message else "?"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def test_running_kv_allowed_prefix_hits_refused_on_a_real_keep_mode_recording():
    trace = read_trace(TRACES / "vllm-keep.msgpack")  # keep-mode updates, no cache clear
    assert _kv_kinds(trace, Policy()) == {"running": 20}
    assert _kv_kinds(trace, Policy(allow_stale_running_kv=True)) == {}
    assert _kv_kinds(trace, Policy(allow_stale_prefix_hits=True)) == {"running": 20}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_requeued_samples_hit_old_prefix_blocks_which_only_the_prefix_setting_accepts(seed):
    """Abort-mode pause without a cache reset, aborted samples requeued: the retries reuse the prompt's blocks
    computed by the old weights; the running requests' own KV is dropped by the abort, so only hits remain."""
    s = load_scenario(REPO / "scenarios" / "default.toml")
    s = s.replace(loop=dataclasses.replace(s.loop, pause_mode="abort", clear_cache=False, on_abort="requeue"))
    trace = simulate(RunInputs(s, seed))
    strict = _kv_kinds(trace, Policy())
    assert set(strict) == {"prefix"} and strict["prefix"] > 10
    assert _kv_kinds(trace, Policy(allow_stale_running_kv=True)) == strict
    assert _kv_kinds(trace, Policy(allow_stale_prefix_hits=True)) == {}
    # the correct twin (cache cleared at the pause) is clean under the strict policy
    clean = simulate(RunInputs(s.replace(loop=dataclasses.replace(s.loop, clear_cache=True)), seed))
    assert _kv_kinds(clean, Policy()) == {}


def test_pause_keeps_samples_is_waived_by_default_and_flags_an_abort_mode_pause_when_stated():
    trace = read_trace(TRACES / "vllm-abort.msgpack")
    default = check_trace(trace, only=["pause_keeps_samples"])
    assert "pause_keeps_samples" in default.waived and not default.violations
    stated = check_trace(trace, Policy(pause_keeps_samples=True), only=["pause_keeps_samples"])
    assert len(stated.violations) == 24  # every sample the two abort-mode pauses aborted
    v = stated.violations[0]
    assert "abort mode" in v.cause and v.req_id == "0_g4" and "during the pause" in v.message
    assert [e.kind for e in v.events] == ["pause", "abort"]


def test_pause_keeps_samples_holds_on_a_keep_mode_recording_and_on_simulated_wait_and_keep_loops():
    keep = check_trace(read_trace(TRACES / "vllm-keep.msgpack"), Policy(pause_keeps_samples=True),
                       only=["pause_keeps_samples"])
    assert keep.checked == ["pause_keeps_samples"] and not keep.violations
    s = load_scenario(REPO / "scenarios" / "default.toml")
    for mode in ("wait", "keep"):
        for seed in range(4):
            run = simulate(RunInputs(s.replace(loop=dataclasses.replace(s.loop, pause_mode=mode)), seed))
            r = check_trace(run, Policy(pause_keeps_samples=True), only=["pause_keeps_samples"])
            assert r.checked and not r.violations, (mode, seed, r.violations[:1])
    aborting = simulate(RunInputs(s, 0))  # the default loop pauses in abort mode
    assert check_trace(aborting, Policy(pause_keeps_samples=True), only=["pause_keeps_samples"]).violations


def test_policy_files_take_the_new_keys_and_reject_bad_values():
    p = policy_from_dict({"allow_stale_running_kv": True, "pause_keeps_samples": True})
    assert p.allow_stale_running_kv and p.pause_keeps_samples and not p.allow_stale_prefix_hits
    with pytest.raises(PolicyError, match=r"x\.toml: policy field allow_stale_prefix_hits: expected"):
        policy_from_dict({"allow_stale_prefix_hits": "yes"}, "x.toml")
