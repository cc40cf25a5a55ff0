"""The version publisher and the weights served (tracesim/sim/publisher.py, weights.py): each bug setting's
simulated trace fires the invariant that names its break, its correct twin is clean over many seeds, every
setting changes the trace, explore can inject it, and the vLLM scheduler backend agrees with the native one."""

from __future__ import annotations

import dataclasses

import pytest
from check_builder import Run, correct_group
from conftest import REPO
from helpers import both_backends

from tracesim.check import Policy, check_trace, load_policy
from tracesim.check.fingerprint import _FOREIGN, _STALE
from tracesim.format import Aborted, Paused, Resumed, TrainerConsumed, WeightsFingerprint, WeightsUpdated
from tracesim.format.digest import records_digest
from tracesim.sim import perturb as P
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import ScenarioError, load_scenario

TWIN_SEEDS = range(20)  # a correct twin must be clean over this many seeds
BUG_SEEDS = range(4)  # a bug setting fires on every one of these

DEFAULT = load_scenario(REPO / "scenarios" / "default.toml")
SMALL = DEFAULT.replace(workload=dataclasses.replace(DEFAULT.workload, num_prompts=16))
# an in-flight update loop: keep pause with a cache clear (running requests recompute), samples keep spans, no
# sample may be lost to a pause (policies/inflight-running-kv.toml)
KEEP = load_scenario(REPO / "scenarios" / "profiles" / "slime-publish-aborts-all.toml")
KEEP = KEEP.replace(loop=dataclasses.replace(KEEP.loop, publish_aborts_all=False))
KEEP_POLICY = load_policy(REPO / "policies" / "inflight-running-kv.toml")


def loop(scenario, **kw):
    return scenario.replace(loop=dataclasses.replace(scenario.loop, **kw))


def sim(scenario, seed: int = 0, *perturbations):
    return simulate(RunInputs(scenario, seed, tuple(perturbations)))


def of(trace, kind, **match):
    return [r for r in trace.records if type(r) is kind and all(getattr(r, k) == v for k, v in match.items())]


def violations(trace, policy, invariant=None) -> list:
    return [v for v in check_trace(trace, policy).violations if invariant is None or v.invariant == invariant]


def assert_clean(scenario, policy, seeds=TWIN_SEEDS):
    for seed in seeds:
        found = violations(sim(scenario, seed), policy)
        assert found == [], (seed, [(v.invariant, v.message) for v in found[:3]])


# --- weight payload faults -----------------------------------------------------------------------------------


def test_fingerprints_are_off_by_default_and_on_add_only_fingerprint_records():
    base = sim(SMALL)
    assert not of(base, WeightsFingerprint)
    assert "served_weights_match_published" in check_trace(base).not_checkable
    on = sim(loop(SMALL, weight_fingerprints=True))
    prints = of(on, WeightsFingerprint)
    updates = of(on, WeightsUpdated)
    # the base weights on both sides, then one published and one served per update
    assert len(prints) == 2 + 2 * len(updates) and {p.side for p in prints} == {"trainer", "engine"}
    others = [r for r in on.records if type(r) is not WeightsFingerprint]
    assert records_digest(others) == records_digest(base.records)  # recording them changes nothing else
    assert "served_weights_match_published" not in check_trace(on).not_checkable


def test_correct_sync_with_fingerprints_is_clean_over_many_seeds():
    assert_clean(loop(SMALL, weight_fingerprints=True), Policy())


@pytest.mark.parametrize("fault, cause, per_update", [
    ("skip", _STALE, 1),  # the engine keeps serving the base weights under every version
    ("reload_base", _STALE, 1),  # the right weights after the load, the base ones after the wake-up
    ("torn", _FOREIGN, 1),  # a mix of the previous and the new weights, never published
])
def test_weight_sync_fault_fires_served_weights_match_published(fault, cause, per_update):
    for seed in BUG_SEEDS:
        trace = sim(loop(SMALL, weight_sync_fault=fault), seed)
        found = violations(trace, Policy())
        # the label moves as it should: only the fingerprints see the fault
        assert {v.invariant for v in found} == {"served_weights_match_published"}, (fault, seed)
        assert {v.cause for v in found} == {cause}
        assert len(found) == per_update * len(of(trace, WeightsUpdated))


def test_reload_base_fingerprints_the_engine_again_at_the_wake_up():
    trace = sim(loop(SMALL, weight_sync_fault="reload_base"))
    engine = of(trace, WeightsFingerprint, side="engine", version=1)
    published = of(trace, WeightsFingerprint, side="trainer", version=1)[0]
    base = of(trace, WeightsFingerprint, side="trainer", version=0)[0]
    assert [p.fingerprint for p in engine] == [published.fingerprint, base.fingerprint]
    resumed = of(trace, Resumed, side="client")[0]
    assert engine[1].t_ns == resumed.t_ns


def test_skip_and_torn_serve_different_weights():
    skip = of(sim(loop(SMALL, weight_sync_fault="skip")), WeightsFingerprint, side="engine")
    torn = of(sim(loop(SMALL, weight_sync_fault="torn")), WeightsFingerprint, side="engine")
    assert len({p.fingerprint for p in skip}) == 1  # the base weights throughout
    assert len({p.fingerprint for p in torn}) == len(torn)  # a new mix at every update


# --- where the label source advances -------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before_pause", "after_resume"])
def test_label_advancing_off_the_apply_point_fires_tokens_from_labelled_version(point):
    for seed in BUG_SEEDS:
        found = violations(sim(loop(KEEP, label_advance=point), seed), KEEP_POLICY, "tokens_from_labelled_version")
        assert found, (point, seed)


@pytest.mark.parametrize("point", ["apply", "publish"])
def test_label_advancing_at_apply_or_publish_under_a_holding_pause_is_clean(point):
    assert_clean(loop(KEEP, label_advance=point), KEEP_POLICY)


def test_label_at_publish_is_wrong_once_the_pause_does_not_hold():
    # with the write started before the drain, the batch in flight is stamped with a version not yet in
    no_drain = loop(KEEP, wait_for_drain=False)
    for seed in BUG_SEEDS:
        assert violations(sim(loop(no_drain, label_advance="publish"), seed), KEEP_POLICY,
                          "tokens_from_labelled_version"), seed
        assert not violations(sim(loop(no_drain, label_advance="apply"), seed), KEEP_POLICY,
                              "tokens_from_labelled_version"), seed


def test_label_advance_moves_the_recorded_set_time():
    def update(point):
        return of(sim(loop(KEEP, label_advance=point)), WeightsUpdated)[0]
    apply, publish, before, after = (update(p) for p in ("apply", "publish", "before_pause", "after_resume"))
    assert apply.set_ns == apply.end_ns
    assert publish.set_ns == publish.t_ns < publish.end_ns
    assert before.set_ns < before.t_ns
    rtt_ns = (KEEP.engine.add_latency_us + KEEP.engine.output_latency_us) * 1000
    assert after.set_ns == after.end_ns + rtt_ns


# --- a publish that aborts everything in flight --------------------------------------------------------------


def test_publish_aborts_all_loses_the_samples_the_keep_pause_kept():
    for seed in BUG_SEEDS:
        trace = sim(loop(KEEP, publish_aborts_all=True), seed)
        found = violations(trace, KEEP_POLICY)
        assert found and {v.invariant for v in found} == {"pause_keeps_samples"}, seed
        pause = of(trace, Paused, side="client")[0]
        resume = of(trace, Resumed, side="client")[0]
        aborted = [a for a in of(trace, Aborted, side="engine") if pause.t_ns <= a.t_ns < resume.t_ns]
        assert aborted, seed  # the publish's aborts fall inside the pause, before the resume


def test_publish_without_side_effects_is_clean_over_many_seeds():
    assert_clean(KEEP, KEEP_POLICY)


# --- a version counter that goes backwards -------------------------------------------------------------------


def test_version_reset_publishes_version_one_again_and_is_caught():
    for seed in BUG_SEEDS:
        trace = sim(loop(KEEP, version_reset_at=5), seed)
        assert [w.version for w in of(trace, WeightsUpdated)] == [1, 2, 3, 4, 1, 2]
        found = violations(trace, KEEP_POLICY)
        assert "policy_versions_increase" in {v.invariant for v in found}
        # samples of the versions before the failover consumed after it: negative staleness
        negative = [v for v in found if v.invariant == "version_lag_within_bound"]
        assert negative and all("newer than the trainer's version" in v.message for v in negative), seed


def test_policy_versions_increase_holds_on_correct_runs():
    for seed in TWIN_SEEDS:
        trace = sim(KEEP, seed)
        assert violations(trace, KEEP_POLICY, "policy_versions_increase") == [], seed


def test_policy_versions_increase_on_hand_built_traces():
    def trace(reset: bool):
        run = Run()
        for i in range(3):
            correct_group(run, f"g{i}")
            if reset and i == 2:
                run.version = 0  # the failover: the counter restarts
            run.update_weights()
        return run.trace()

    assert violations(trace(False), Policy(max_version_lag=None), "policy_versions_increase") == []
    found = violations(trace(True), Policy(max_version_lag=None), "policy_versions_increase")
    assert len(found) == 1 and [e.kind for e in found[0].events] == ["weights", "weights"]
    assert "updated the weights to version 1" in found[0].message and "after version 2" in found[0].message
    # a trainer version going down between two consumptions is caught too
    run = correct_group(Run(version=3), "g0")
    correct_group(run, "g1")
    run.replace(TrainerConsumed, nth=1, trainer_version=2)
    found = violations(run.trace(), Policy(max_version_lag=None), "policy_versions_increase")
    assert len(found) == 1 and "trainer version 2" in found[0].message
    # the engine's and the client's records of one update share its version: not a repeat
    run = correct_group(Run(), "g0")
    run.update_weights()
    w = run.records[run.find(WeightsUpdated)]
    run.emit(w._replace(side="engine"))
    assert violations(run.trace(), Policy(max_version_lag=None), "policy_versions_increase") == []


def test_policy_versions_increase_is_not_checkable_without_versions():
    run = Run()
    run.admit("r0")
    run.generate(["r0"])
    assert "policy_versions_increase" in check_trace(run.trace()).not_checkable


# --- settings: validation, injection by explore --------------------------------------------------------------


@pytest.mark.parametrize("text, field", [
    ('label_advance = "at_finish"', "[loop].label_advance"),
    ('weight_sync_fault = "half"', "[loop].weight_sync_fault"),
    ("version_reset_at = 1", "[loop].version_reset_at"),
    ("version_reset_at = -2", "[loop].version_reset_at"),
    ('publish_aborts_all = "yes"', "[loop].publish_aborts_all"),
])
def test_bad_settings_name_the_file_and_the_field(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(f"[loop]\n{text}\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert str(path) in str(err.value) and field in str(err.value)


@pytest.mark.parametrize("text, changed", [
    ("set(weight_fingerprints=true)", lambda t: of(t, WeightsFingerprint)),
    ("set(weight_sync_fault=torn)", lambda t: violations(t, Policy(), "served_weights_match_published")),
    ("set(label_advance=before_pause)", lambda t: of(t, WeightsUpdated)[0].set_ns < of(t, WeightsUpdated)[0].t_ns),
    ("set(publish_aborts_all=true)", lambda t: violations(t, KEEP_POLICY, "pause_keeps_samples")),
    ("set(version_reset_at=3)", lambda t: [w.version for w in of(t, WeightsUpdated)][:3] == [1, 2, 1]),
])
def test_explore_can_inject_each_setting(text, changed):
    p = P.parse(text)
    assert str(p) == text
    base = sim(KEEP, 0)
    trace = sim(KEEP, 0, p)
    assert trace.header.inputs["perturbations"] == [text]
    assert changed(trace) and records_digest(trace.records) != records_digest(base.records)


# --- the vLLM scheduler backend ------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.parametrize("settings", [
    {"weight_sync_fault": "reload_base"}, {"label_advance": "after_resume"}, {"label_advance": "before_pause"},
    {"publish_aborts_all": True}, {"version_reset_at": 2},
])
def test_vllm_backend_agrees_with_native_record_for_record(settings):
    small = KEEP.replace(workload=dataclasses.replace(KEEP.workload, num_prompts=12))
    both, agreement = both_backends(loop(small, **settings))
    assert agreement.records_identical, agreement
    assert {v.invariant for v in check_trace(both["vllm"], KEEP_POLICY).violations} == \
        {v.invariant for v in check_trace(both["native"], KEEP_POLICY).violations} != set()
