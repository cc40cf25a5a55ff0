"""Search spaces: ``loop`` draws the loop's own protocol settings (every loop key of perturb.CONFIG_KEYS),
``faults`` the engine's output-accounting faults with what opens their windows; ``env`` draws neither."""

from __future__ import annotations

import pytest

from conftest import REPO
from tracesim.cli.main import main
from tracesim.explore import Base, explore, run_one
from tracesim.explore.runner import RunSpec, base_settings
from tracesim.explore.search import RunPlan
from tracesim.explore.targets import ENV_LOOP_KEYS, FAULT_WINDOWS, _fault_keys, _protocol_keys, _switch_values
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
    assert len(protocol - keys) <= 3, protocol - keys  # nearly all of them in 1,200 runs (each draw is random)
    settings, _ = base_settings(DEFAULT)
    assert all(p.value != settings[p.key] for p in drawn if p.key in protocol)
    assert not keys & set(_fault_keys())


def test_protocol_keys_cover_every_loop_key_but_the_environment():
    loop_keys = {k for k, (part, _) in P.CONFIG_KEYS.items() if part == "loop"}
    assert set(_protocol_keys()) == loop_keys - set(ENV_LOOP_KEYS) - {"pause_mode", "clear_cache"}
    # a setting the search has no values for is never drawn: an integer one needs targets.INT_SWITCH_VALUES
    assert [k for k in _protocol_keys() + _fault_keys() if not _switch_values(k)] == []


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
    # on the correct scenario, a search of the loop space ends with findings whose minimal counterexample is one
    # protocol switch alone (e.g. grouping by completion position, or partial-rollout continuation, which gives
    # samples of two versions that the strict policy forbids); the env space never draws one
    result = explore(DEFAULT, budget=200, seed=0, workers=1, spaces=("env", "loop"))
    protocol = set(_protocol_keys())
    alone = [f.minimal.perturbations[0] for f in result.findings if len(f.minimal.perturbations) == 1
             and isinstance(f.minimal.perturbations[0], P.SetConfig) and f.minimal.perturbations[0].key in protocol]
    assert alone, [f.minimal.perturbations for f in result.findings]
    env = explore(DEFAULT, budget=64, seed=0, workers=1)
    assert not any(isinstance(p, P.SetConfig) and p.key in protocol
                   for f in env.findings for p in f.minimal.perturbations)


def test_a_drawn_protocol_switch_is_a_one_line_repro():
    out = run_one(RunSpec(DEFAULT, 0, (P.SetConfig("on_abort", "continue"),)))
    assert "tokens_from_labelled_version" in {s.invariant for s in out.signatures()}


def test_the_faults_space_finds_each_fault_with_the_window_it_needs():
    # the correct default scenario runs one sync engine with a large KV pool and no KV transfer: no fault has a
    # window there, so each finding needs its fault and what opens the window (batches in flight and a
    # preemption; data-parallel ranks; KV transfers). A data-parallel fault hangs the run: it is judged on the
    # records up to the hang, and the samples never accounted for are the finding.
    result = explore(DEFAULT, budget=200, seed=0, workers=1, spaces=("env", "faults"))
    assert not result.errors, result.errors[:3]
    by_fault = {}
    for f in result.findings:
        keys = {p.key for p in f.minimal.perturbations if isinstance(p, P.SetConfig)}
        faults = keys & set(_fault_keys())
        assert len(faults) == 1, f.minimal.perturbations  # every finding here is caused by one engine fault
        fault = faults.pop()
        by_fault.setdefault(fault, set()).add(f.signature.invariant)
        opener = FAULT_WINDOWS[fault][0] if fault in FAULT_WINDOWS else "async_scheduling"
        assert opener in keys, f.minimal.perturbations  # shrinking kept the window opener: the fault alone is inert
        assert f.deterministic is True
    # a duplicated frame and a dropped one break the same invariant at the same kinds of records: one
    # signature, so one finding, whichever fault came first
    assert set(_fault_keys()) - set(by_fault) <= {"fault_duplicate_frame"}, by_fault
    dup = (P.SetConfig("fault_duplicate_frame", 1.0), P.SetConfig("async_scheduling", True),
           P.SetConfig("num_gpu_blocks", 23))
    assert "tokens_delivered_exactly_once" in {s.invariant for s in run_one(RunSpec(DEFAULT, 0, dup)).signatures()}
    assert by_fault["fault_resume_context_missing_tokens"] == {"resumed_context_complete"}
    assert by_fault["fault_dp_finish_no_output"] == {"sample_ends_exactly_once"}
    assert by_fault["fault_pd_free_in_transfer"] == {"kv_transfer_completes_for_held_request"}


def test_space_option_takes_a_list_and_rejects_unknown_names(tmp_path, capsys):
    out = tmp_path / "cx"
    code = main(["explore", "--scenario", str(SCEN / "default.toml"), "--budget", "8", "--space", "loop,faults",
                 "--no-progress", "--no-plot", "--workers", "1", "-o", str(out)])
    assert code in (0, 1)
    with pytest.raises(SystemExit) as exc:
        main(["explore", "--scenario", str(SCEN / "default.toml"), "--space", "loops", "--no-progress"])
    assert exc.value.code == 2
    assert "'loops': expected one or more of env, loop, faults" in capsys.readouterr().err
