"""Search spaces: ``loop`` draws the loop's own protocol settings (every loop key of perturb.CONFIG_KEYS),
``faults`` the engine's output-accounting faults with what opens their windows; ``env`` draws neither."""

from __future__ import annotations

import pytest

from conftest import REPO
from tracesim.cli.main import main
from tracesim.explore import Base, explore
from tracesim.explore.runner import base_settings
from tracesim.explore.search import RunPlan
from tracesim.explore.targets import ENV_LOOP_KEYS, _fault_keys, _protocol_keys
from tracesim.sim import perturb as P

SCEN = REPO / "scenarios"
DEFAULT = Base("scenario", str(SCEN / "default.toml"))


def _switches(base, spaces, runs=400):
    plan = RunPlan(base, 0, spaces)
    return [p for i in range(runs) for p in plan.spec(i).perturbations if isinstance(p, P.SetConfig)]


def test_env_space_draws_no_protocol_setting_and_no_fault():
    keys = {p.key for p in _switches(DEFAULT, ("env",))}
    assert not keys & set(_protocol_keys()), keys
    assert not keys & set(_fault_keys()), keys


def test_loop_space_draws_the_protocol_settings_with_values_other_than_the_base():
    drawn = _switches(DEFAULT, ("env", "loop"), runs=1200)
    keys = {p.key for p in drawn}
    protocol = set(_protocol_keys())
    assert protocol - {"continue_label", "reset_connector"} <= keys, protocol - keys  # the common ones, at least
    settings, _ = base_settings(DEFAULT)
    assert all(p.value != settings[p.key] for p in drawn if p.key in protocol)
    assert not keys & set(_fault_keys())


def test_protocol_keys_cover_every_loop_key_but_the_environment():
    loop_keys = {k for k, (part, _) in P.CONFIG_KEYS.items() if part == "loop"}
    assert set(_protocol_keys()) == loop_keys - set(ENV_LOOP_KEYS) - {"pause_mode", "clear_cache"}


def test_switches_the_base_rejects_are_not_drawn(tmp_path):
    # a keep pause that asks for a cache reset: "retry" on refusal never succeeds there and is rejected by
    # scenario validation, so the search must not spend runs on it
    text = (SCEN / "default.toml").read_text()
    path = tmp_path / "keep-reset.toml"
    path.write_text(text.replace('pause_mode = "abort"', 'pause_mode = "keep"\nreset_prefix_cache = true', 1))
    base = Base("scenario", str(path))
    _, ok = base_settings(base)
    assert not ok("on_reset_refused", "retry") and ok("on_reset_refused", "ignore")
    drawn = {(p.key, p.value) for p in _switches(base, ("env", "loop"), runs=1200)}
    assert ("on_reset_refused", "ignore") in drawn
    assert ("on_reset_refused", "retry") not in drawn


def test_the_loop_space_finds_what_a_protocol_switch_breaks():
    # partial-rollout continuation under the strict policy (no mixed versions): the continued sample holds
    # tokens of the version after the update; the env space cannot say that, the loop space finds it
    result = explore(DEFAULT, budget=200, seed=0, workers=1, spaces=("env", "loop"))
    minimal = {str(p) for f in result.findings for p in f.minimal.perturbations}
    assert "set(on_abort=continue)" in minimal, minimal
    env = explore(DEFAULT, budget=64, seed=0, workers=1)
    assert not any(isinstance(p, P.SetConfig) and p.key in _protocol_keys()
                   for f in env.findings for p in f.minimal.perturbations)


def test_the_faults_space_finds_each_fault_with_the_window_it_needs():
    # the correct default scenario runs a sync engine with a large KV pool: no fault has a window there, so
    # each finding needs its fault and what opens the window (batches in flight and a preemption)
    result = explore(DEFAULT, budget=100, seed=0, workers=1, spaces=("env", "faults"))
    by_fault = {}
    for f in result.findings:
        keys = {p.key for p in f.minimal.perturbations if isinstance(p, P.SetConfig)}
        faults = keys & set(_fault_keys())
        assert len(faults) == 1, f.minimal.perturbations  # every finding here is caused by one engine fault
        by_fault[faults.pop()] = f.signature.invariant
        assert "async_scheduling" in keys  # shrinking kept the window opener: the fault alone is inert
    assert len(by_fault) >= 3, by_fault
    assert by_fault.get("fault_resume_context_missing_tokens", "resumed_context_complete") == "resumed_context_complete"


def test_space_option_takes_a_list_and_rejects_unknown_names(tmp_path, capsys):
    out = tmp_path / "cx"
    code = main(["explore", "--scenario", str(SCEN / "default.toml"), "--budget", "8", "--space", "loop,faults",
                 "--no-progress", "--no-plot", "--workers", "1", "-o", str(out)])
    assert code in (0, 1)
    with pytest.raises(SystemExit) as exc:
        main(["explore", "--scenario", str(SCEN / "default.toml"), "--space", "loops", "--no-progress"])
    assert exc.value.code == 2
    assert "'loops': expected one or more of env, loop, faults" in capsys.readouterr().err
