"""Framework profiles (scenarios/profiles/, docs/frameworks.md): every framework's correct configuration
simulates clean under the policy it names and short exploration finds nothing; every bug variant fires the
invariant its reported bug breaks, and stops firing it when its bug setting is put back."""

from __future__ import annotations

import dataclasses
import re

import pytest

from conftest import REPO
from tracesim.check import Policy, check_trace, load_policy
from tracesim.explore import Base, explore
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import load_scenario

PROFILES = REPO / "scenarios" / "profiles"
FRAMEWORKS = ("areal", "nemo-rl", "openrlhf", "pipelinerl", "prime-rl", "skyrl", "slime", "trl", "verl")
SEEDS = range(4)
EXPLORE_BUDGET = 32  # one round: the unperturbed run and 31 perturbed ones aimed at its meeting points

# bug variant -> (the invariant its bug breaks, found by: "simulate" (every seed) or "explore",
#                 the [loop] setting that puts the bug back as the correct profile has it)
BUGS = {
    "areal-no-drain": ("no_weight_write_during_forward", "simulate", {"wait_for_drain": True}),
    "nemo-rl-stale-prefix-cache": ("no_stale_kv", "simulate", {"clear_cache": True}),
    "prime-rl-admission-label": ("tokens_from_labelled_version", "explore", {"version_label": "spans"}),
    "prime-rl-cancel-in-transfer": ("kv_transfer_completes_for_held_request", "simulate",
                                    {"cancel_off_policy": False}),
    "skyrl-abort-noop": ("no_weight_write_during_forward", "simulate", {"abort_ids": "external"}),
    "skyrl-kv-not-cleared": ("no_stale_kv", "simulate", {"clear_cache": True}),
    "slime-partial-requeue": ("tokens_from_labelled_version", "simulate", {"on_abort": "drop"}),
    "verl-label-at-finish": ("version_lag_within_bound", "explore", {"version_label": "spans"}),
    "verl-recompute-old-logprob": ("behaviour_logprobs_from_sampling_policy", "simulate",
                                   {"behaviour_logprobs": "engine"}),
    "verl-retry-same-id": ("request_ids_live_once", "explore", {"retry_ids": "fresh"}),
    # the version publisher and the weights served (tracesim/sim/publisher.py, weights.py)
    "trl-reload-weights": ("served_weights_match_published", "simulate", {"weight_sync_fault": "none"}),
    "verl-adapter-not-synced": ("served_weights_match_published", "simulate", {"weight_sync_fault": "none"}),
    "slime-publish-aborts-all": ("pause_keeps_samples", "simulate", {"publish_aborts_all": False}),
    "slime-version-reset": ("policy_versions_increase", "simulate", {"version_reset_at": 0}),
}


def policy_path(path) -> str:
    """The policy file a profile names in its ``# policy: FILE`` comment line (relative to the repo)."""
    m = re.search(r"^# policy: (\S+)$", path.read_text(), re.M)
    assert m, f"{path.name} names no policy (a '# policy: policies/....toml' line)"
    return str(REPO / m.group(1))


def invariants_of(scenario, policy, seed: int) -> set:
    return {v.invariant for v in check_trace(simulate(RunInputs(scenario, seed=seed)), policy).violations}


def explored(path, policy: str) -> set:
    result = explore(Base("scenario", str(path), policy=policy), budget=EXPLORE_BUDGET, seed=0, workers=1,
                     shrink_failures=False)
    assert result.runs == EXPLORE_BUDGET and not result.errors, result.errors
    return {f.signature.invariant for f in result.findings}


def test_every_profile_is_a_framework_or_a_listed_bug_of_one():
    names = {p.stem for p in PROFILES.glob("*.toml")}
    assert names == set(FRAMEWORKS) | set(BUGS)
    assert all(bug.split("-")[0] in {f.split("-")[0] for f in FRAMEWORKS} for bug in BUGS)
    docs = (REPO / "docs" / "frameworks.md").read_text()
    assert [n for n in sorted(names) if f"`{n}.toml`" not in docs] == []  # each one documented


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_correct_profile_simulates_clean_and_exploration_finds_nothing(name):
    path = PROFILES / f"{name}.toml"
    scenario, policy = load_scenario(path), policy_path(path)
    for seed in SEEDS:
        trace = simulate(RunInputs(scenario, seed=seed))
        assert trace.counts().get("weights", 0) >= 2  # the run went through weight updates
        assert check_trace(trace, load_policy(policy)).violations == [], (name, seed)
    assert explored(path, policy) == set(), name


@pytest.mark.parametrize("name", sorted(BUGS))
def test_bug_variant_fires_its_invariant_and_its_fix_does_not(name, tmp_path):
    invariant, found_by, fix = BUGS[name]
    path = PROFILES / f"{name}.toml"
    scenario, policy = load_scenario(path), policy_path(path)
    fixed = scenario.replace(loop=dataclasses.replace(scenario.loop, **fix))
    if found_by == "simulate":
        for seed in SEEDS:
            assert invariant in invariants_of(scenario, load_policy(policy), seed), (name, seed)
            assert invariant not in invariants_of(fixed, load_policy(policy), seed), (name, seed)
        return
    assert invariant in explored(path, policy), name
    # the fixed twin under the same search: the finding hangs on the bug setting
    twin = tmp_path / f"{name}-fixed.toml"
    text = path.read_text()
    for key, value in fix.items():
        literal = ("true" if value else "false") if isinstance(value, bool) else f'"{value}"'
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {literal}", text, flags=re.M)
        assert n == 1, (name, key)
    twin.write_text(text)
    assert invariant not in explored(twin, policy), name


def test_policies_of_the_profiles_are_not_the_default():
    # the lag-1 and in-flight policies differ from the strict one exactly where their profiles need them
    lag1 = load_policy(REPO / "policies" / "bounded-lag.toml")
    inflight = load_policy(REPO / "policies" / "inflight-recompute.toml")
    assert lag1 == dataclasses.replace(Policy(), max_version_lag=1)
    assert inflight == dataclasses.replace(Policy(), max_version_lag=1, allow_mixed_versions=True)
