"""KV tiers and cache-reset semantics (issue 13; docs/simulator.md "Cache resets and the external KV tier").

The loop's own ``reset_prefix_cache`` call (``[loop] reset_prefix_cache``) is refused while requests hold KV
blocks, as vLLM refuses it; ``on_reset_refused = "ignore"`` goes on and fires ``no_stale_kv`` naming the refused
reset, "reset_running" and "retry" are clean over many seeds, and both backends agree record for record. An
external KV tier (``[engine] kv_offload_blocks``, native only) keeps evicted and reset blocks; a reset without
``reset_connector`` leaves old-weight KV there, an admission loads it, and ``no_stale_kv`` names the tier.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from tracesim.check import check_trace
from tracesim.format import CacheReset, StepScheduled
from tracesim.format.digest import records_digest
from tracesim.sim.kvcache import BlockPool
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import (
    EngineConfig, LoopPolicy, Scenario, ScenarioError, Workload, load_scenario, scenario_from_dict,
)

KV = "no_stale_kv"
SEEDS = range(12)
W = Workload(num_prompts=16, group_size=4, concurrency=5)
# NeMo-RL's refit: a keep pause holds running requests (and their blocks), then the loop resets the cache itself.
KEEP = LoopPolicy(pause_mode="keep", clear_cache=False, reset_prefix_cache=True)
# A wait pause not waited for: the loop's reset comes while the pause still drains.
NO_DRAIN = LoopPolicy(pause_mode="wait", clear_cache=False, wait_for_drain=False, reset_prefix_cache=True)
# Aborted samples requeued with their prompt after the update: their prefix is in the tier if it was kept.
TIER_LOOP = LoopPolicy(pause_mode="abort", on_abort="requeue", clear_cache=False, reset_prefix_cache=True)
TIER_ENGINE = EngineConfig(kv_offload_blocks=4000, num_gpu_blocks=300)


def _run(loop: LoopPolicy, engine: EngineConfig = EngineConfig(), seed: int = 0, **loop_changes):
    loop = dataclasses.replace(loop, **loop_changes)
    return simulate(RunInputs(Scenario(workload=W, engine=engine, loop=loop), seed=seed))


def _stale(trace) -> list:
    return [v for v in check_trace(trace, only=[KV]).violations if v.invariant == KV]


def _resets(trace, side: str = "engine") -> list:
    return [(r.ok, r.reset_running) for r in trace.of(CacheReset) if r.side == side]


def _cached_tokens(trace) -> int:
    return sum(q.cached_tokens for r in trace.of(StepScheduled) for q in r.reqs)


# --- refused reset --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", [KEEP, NO_DRAIN], ids=["keep", "no-drain"])
def test_ignored_refused_reset_fires_no_stale_kv_naming_the_refusal(loop):
    for seed in range(4):
        trace = _run(loop, seed=seed, on_reset_refused="ignore")
        assert (False, False) in _resets(trace), seed  # vLLM refuses: blocks are in use
        found = _stale(trace)
        assert found, seed
        assert all("was refused (ok = false) and the loop went on" in v.cause for v in found), found[0].cause


def test_reset_running_twin_is_clean_over_many_seeds():
    for seed in SEEDS:
        trace = _run(KEEP, seed=seed, on_reset_refused="reset_running")
        resets = _resets(trace)
        i = resets.index((False, False))
        assert resets[i + 1] == (True, True), (seed, resets)  # asked again with reset_running: preempted, ok
        assert _stale(trace) == [], seed


def test_retry_twin_is_clean_over_many_seeds_and_waits_for_the_drain():
    for seed in SEEDS:
        trace = _run(NO_DRAIN, seed=seed, on_reset_refused="retry")
        resets = Counter(_resets(trace))
        assert resets[(False, False)] > 1 and resets[(True, False)] >= 1, (seed, resets)
        # the write waits for the successful reset, which needs the drain the loop skipped
        assert set(check_trace(trace, only=[KV, "no_weight_write_during_forward"]).violated()) == set(), seed


def test_reset_settings_change_the_trace_and_are_inert_without_the_call():
    digests = {how: records_digest(_run(KEEP if how != "retry" else NO_DRAIN, on_reset_refused=how).records)
               for how in ("ignore", "retry", "reset_running")}
    assert len(set(digests.values())) == 3
    assert records_digest(_run(NO_DRAIN, on_reset_refused="ignore").records) != digests["retry"]
    # reset_prefix_cache itself: the call adds a CacheReset per update cycle
    plain = _run(KEEP, reset_prefix_cache=False)
    assert _resets(plain) == [] and records_digest(plain.records) != digests["reset_running"]
    # without the call (the default) the reaction and the connector flag change nothing
    base = records_digest(plain.records)
    for changes in (dict(on_reset_refused="ignore"), dict(on_reset_refused="retry", pause_mode="wait"),
                    dict(reset_connector=False)):
        other = _run(KEEP, reset_prefix_cache=False, **changes)
        if "pause_mode" not in changes:
            assert records_digest(other.records) == base, changes


@pytest.mark.vllm
@pytest.mark.parametrize("loop,how", [(KEEP, "ignore"), (KEEP, "reset_running"), (NO_DRAIN, "retry")])
def test_vllm_backend_agrees_with_native_on_refused_resets(loop, how):
    pytest.importorskip("vllm")
    from tracesim.sim.backends import compare_backends, run_both

    s = Scenario(workload=W, loop=dataclasses.replace(loop, on_reset_refused=how))
    both = run_both(scenario=s, seed=1)
    agreement = compare_backends(both["native"], both["vllm"])
    assert agreement.records_identical, agreement
    assert (False, False) in _resets(both["vllm"])  # vLLM's own scheduler refused it too


# --- external KV tier -----------------------------------------------------------------------------------------


def test_tier_kept_across_an_update_fires_no_stale_kv_naming_the_tier():
    for seed in range(4):
        trace = _run(TIER_LOOP, TIER_ENGINE, seed=seed, reset_connector=False)
        assert _resets(trace) and all(ok for ok, _ in _resets(trace))  # every GPU reset succeeded
        assert [ok for ok, _ in _resets(trace, "kv_tier")] == [False] * len(_resets(trace))
        found = _stale(trace)
        assert found, seed
        assert all("left the external KV tier" in v.cause for v in found), found[0].cause
        # the checker's evidence is real: the same run with a connector reset hits fewer cached tokens
        twin = _run(TIER_LOOP, TIER_ENGINE, seed=seed, reset_connector=True)
        assert _cached_tokens(trace) > _cached_tokens(twin), seed


def test_reset_connector_twin_is_clean_over_many_seeds():
    for seed in SEEDS:
        trace = _run(TIER_LOOP, TIER_ENGINE, seed=seed, reset_connector=True)
        assert [ok for ok, _ in _resets(trace, "kv_tier")] == [True] * len(_resets(trace)), seed
        assert _stale(trace) == [], seed


def test_pause_clear_cache_resets_the_tier_as_vllm_0_32_does():
    # EngineCore._reset_caches passes reset_connector=True: the pause's clear empties the tier whatever the loop's
    # own call says
    loop = dataclasses.replace(TIER_LOOP, clear_cache=True, reset_prefix_cache=False, reset_connector=False)
    for seed in range(4):
        trace = _run(loop, TIER_ENGINE, seed=seed)
        assert set(ok for ok, _ in _resets(trace, "kv_tier")) == {True}, seed
        assert _stale(trace) == [], seed


def test_without_a_tier_the_connector_flag_is_inert_and_the_run_clean():
    a = _run(TIER_LOOP, seed=2, reset_connector=False)
    b = _run(TIER_LOOP, seed=2, reset_connector=True)
    assert records_digest(a.records) == records_digest(b.records)
    assert _resets(a, "kv_tier") == [] and _stale(a) == []


def test_kv_offload_blocks_changes_the_trace_under_kv_pressure():
    # a small GPU pool evicts cached prompt blocks; the tier brings them back as cached tokens
    w = Workload(num_prompts=12, group_size=4, concurrency=8, prompt_len=(100, 200))
    runs = {n: simulate(RunInputs(Scenario(workload=w, engine=EngineConfig(num_gpu_blocks=40, kv_offload_blocks=n),
                                           loop=LoopPolicy(update_every=0)), seed=0)) for n in (0, 400)}
    assert _cached_tokens(runs[400]) > _cached_tokens(runs[0])
    assert records_digest(runs[400].records) != records_digest(runs[0].records)
    assert _stale(runs[400]) == []  # no update: tier hits are on current weights


def test_block_pool_tier_keeps_evicted_and_reset_blocks_until_reset_tier():
    pool = BlockPool(num_gpu_blocks=4, block_size=4, prefix_caching=True, offload_blocks=2)  # 3 usable
    a, b = pool.take(2)
    pool.commit(a, "k0", 0)
    pool.commit(b, "k1", 0)
    pool.release([a, b])
    pool.take(3)  # evicts both cached blocks: their keys go to the tier
    assert pool.lookup(["k0", "k1"]) == [] and pool.lookup_tier(["k0", "k1"], 0) == 2
    pool.load_tier(["k0", "k1"], 0, 2)
    assert pool.tier_hits == 2
    pool.release(list(range(3)))
    c = pool.take(1)[0]
    pool.commit(c, "k2", 0)
    pool.release([c])
    assert pool.reset()  # nothing referenced: the reset succeeds, k2 moves to the tier (k0, least recent, drops)
    assert list(pool.tier) == ["k1", "k2"]
    assert pool.lookup(["k2"]) == [] and pool.lookup_tier(["k1", "k2"], 0) == 2
    assert pool.reset_tier() and pool.lookup_tier(["k1"], 0) == 0


# --- settings: bad values and the vLLM backend --------------------------------------------------------------


def test_kv_offload_blocks_is_refused_for_the_vllm_backend():
    pytest.importorskip("vllm")
    with pytest.raises(ScenarioError, match=r"\[engine\].kv_offload_blocks: an external KV tier of the native"):
        scenario_from_dict({"engine": {"scheduler_backend": "vllm", "kv_offload_blocks": 8}})


def test_bad_reset_settings_name_the_file_and_field(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[loop]\non_reset_refused = "shrug"\n')
    with pytest.raises(ScenarioError, match=r"s\.toml: \[loop\]\.on_reset_refused: 'shrug' is not one of"):
        load_scenario(path)
    path.write_text('[loop]\npause_mode = "keep"\nreset_prefix_cache = true\non_reset_refused = "retry"\n')
    with pytest.raises(ScenarioError, match=r"s\.toml: \[loop\]\.on_reset_refused: 'retry' never succeeds"):
        load_scenario(path)
    path.write_text("[engine]\nkv_offload_blocks = -1\n")
    with pytest.raises(ScenarioError, match=r"s\.toml: \[engine\]\.kv_offload_blocks: must be 0"):
        load_scenario(path)
