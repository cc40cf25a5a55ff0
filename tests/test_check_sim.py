"""Checkers against the simulator: the correct configuration yields no violation over many seeds (a false
positive is a bug), and deliberately wrong configurations are caught."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import REPO

sim_run = pytest.importorskip("tracesim.sim.run")
scenario_mod = pytest.importorskip("tracesim.sim.scenario")

from tracesim.check import Policy, check_trace  # noqa: E402

SEEDS = range(12)


def simulate(scenario, seed: int):
    return sim_run.simulate(sim_run.RunInputs(scenario, seed))


def _summary(report) -> str:
    return "\n".join(f"{v.invariant}: {v.req_id} step {v.step}: {v.message}" for v in report.violations[:10])


@pytest.mark.parametrize("seed", SEEDS)
def test_correct_configuration_has_no_violation_under_the_strict_policy(seed):
    scenario = scenario_mod.load_scenario(REPO / "scenarios" / "default.toml")
    report = check_trace(simulate(scenario, seed))
    assert report.violations == [], _summary(report)
    # the simulator does not stamp token ids on its outputs (only recordings made with --record-tokens have them),
    # nor logprobs, models no weight contents (no fingerprints), and records behaviour logprobs only when its loop is
    # set to
    assert set(report.not_checkable) == {"client_tokens_match_engine", "behaviour_logprobs_match_returned",
                                         "logprobs_processed_as_trained", "served_weights_match_published",
                                         "behaviour_logprobs_from_sampling_policy"}


def _engine(**kw):
    s = scenario_mod.Scenario()
    return s.replace(engine=replace(s.engine, **kw))


def _loop(**kw):
    s = scenario_mod.Scenario()
    return s.replace(loop=replace(s.loop, **kw))


# These loops keep generating while the trainer trains, so a sample may be one version old when consumed.
ONE_STEP_OFF = Policy(max_version_lag=1)
UNBOUNDED = Policy(max_version_lag=None)


@pytest.mark.parametrize("name, scenario, policy", [
    ("async scheduling with preemption", _engine(async_scheduling=True, num_gpu_blocks=96), ONE_STEP_OFF),
    ("abort and requeue under fresh ids", _loop(on_abort="requeue"), ONE_STEP_OFF),
    ("keep-mode pause, spans kept", _loop(pause_mode="keep"), Policy(allow_mixed_versions=True, max_version_lag=1)),
])
def test_other_correct_configurations_have_no_violation(name, scenario, policy):
    for seed in range(3):
        report = check_trace(simulate(scenario, seed), policy)
        assert report.violations == [], f"{name}, seed {seed}:\n{_summary(report)}"


@pytest.mark.parametrize("scenario, policy, expected", [
    (_loop(reward_match="arrival"), UNBOUNDED, {"reward_bound_to_own_tokens"}),
    (_loop(wait_for_drain=False), UNBOUNDED, {"no_weight_write_during_forward"}),
    (_loop(pause_mode="keep"), UNBOUNDED, {"tokens_from_labelled_version"}),
    (_loop(clear_cache=False, on_abort="requeue"), UNBOUNDED, {"no_stale_kv"}),
    (_loop(version_read="late", version_label="admission", update_every=1, reward_us=(20000, 200000)),
     UNBOUNDED, {"tokens_from_labelled_version"}),
    (_loop(max_version_lag=-1, update_every=1), Policy(max_version_lag=0), {"version_lag_within_bound"}),
])
def test_wrong_configurations_are_caught(scenario, policy, expected):
    found = set()
    for seed in range(3):
        found |= set(check_trace(simulate(scenario, seed), policy).violated())
    assert found == expected


def test_bundled_bad_scenario_breaks_its_three_bindings():
    scenario = scenario_mod.load_scenario(REPO / "scenarios" / "keep-bad-bindings.toml")
    violated = set(check_trace(simulate(scenario, 0)).violated())
    assert {"reward_bound_to_own_tokens", "tokens_from_labelled_version", "no_stale_kv"} <= violated
