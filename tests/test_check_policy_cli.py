"""Policy files and the ``tracesim check`` command: exit codes, text and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from check_builder import Run, correct_group

from tracesim.check import Policy, load_policy
from tracesim.check.policy import PolicyError
from tracesim.cli.main import main
from tracesim.format import write_trace

POLICIES = Path(__file__).resolve().parent.parent / "policies"


def test_default_policy_is_strict():
    p = Policy()
    assert (p.allow_mixed_versions, p.max_version_lag, p.allow_stale_kv) == (False, 0, False)
    assert load_policy(POLICIES / "strict.toml") == p


def test_bundled_policies_load():
    p = load_policy(POLICIES / "inflight-updates.toml")
    assert p.allow_mixed_versions and p.allow_stale_kv and p.max_version_lag == 4
    assert load_policy(POLICIES / "recording-cut-off.toml").max_version_lag is None


def test_policy_keys_may_sit_at_top_level(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("max_version_lag = 2\n")
    assert load_policy(f).max_version_lag == 2


@pytest.mark.parametrize("text, needle", [
    ("[policy]\nmax_lag = 1\n", "unknown policy key 'max_lag'"),
    ("[policy]\nallow_stale_kv = 1\n", "allow_stale_kv"),
    ("[policy]\nmax_version_lag = -1\n", "max_version_lag"),
    ("[policy\n", "not valid TOML"),
])
def test_bad_policy_file_is_one_policy_error_naming_the_file(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policy(f)
    assert needle in str(exc.value) and str(f) in str(exc.value)


def _write(tmp_path, run: Run) -> str:
    path = tmp_path / "t.msgpack"
    write_trace(path, run.trace())
    return str(path)


def _swapped_reward() -> Run:
    run = Run()
    for i, r in enumerate(("a", "b")):
        run.admit(r, "g0", i, 2)
    run.generate(["a", "b"])
    run.reward("a", scored="b")
    run.reward("b")
    run.consume(["a", "b"])
    return run


def test_clean_trace_exits_0(tmp_path, capsys):
    assert main(["check", _write(tmp_path, correct_group())]) == 0
    assert ": ok;" in capsys.readouterr().out


def test_violations_exit_1_and_json_lists_them(tmp_path, capsys):
    assert main(["check", _write(tmp_path, _swapped_reward()), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"violations", "not_checkable", "checked", "waived", "lost_records", "in_flight_at_end",
                        "trace_start_ns", "truncated", "skipped_records"}
    (v,) = doc["violations"]
    assert v["invariant"] == "reward_bound_to_own_tokens" and v["req_id"] == "a"
    assert {"step", "t_ns", "message", "events"} <= set(v)


def test_text_output_names_invariant_request_and_events(tmp_path, capsys):
    assert main(["check", _write(tmp_path, _swapped_reward())]) == 1
    out = capsys.readouterr().out
    assert "reward_bound_to_own_tokens: 1 violation(s)" in out
    assert "the reward bound to a was computed on tokens" in out
    assert "      reward      at " in out and " ms  a" in out  # each record, in ms from the trace start
    assert "1 violation(s) of reward_bound_to_own_tokens (1)" in out


def test_many_violations_of_one_cause_are_grouped_with_a_count(tmp_path, capsys):
    from check_builder import correct_group as group_of

    run = Run()
    for g in ("g0", "g1", "g2"):
        group_of(run, g, size=3)
    for i, r in enumerate(run.records):  # every sample trained with a reward it was not given
        if r.KIND == "consume":
            run.records[i] = r._replace(samples=tuple(s._replace(reward=9.0) for s in r.samples))
    assert main(["check", _write(tmp_path, run)]) == 1
    out = capsys.readouterr().out
    assert "consumed_sample_matches_binding: 9 violation(s)" in out
    assert "... 7 more like these; all 9 by group:" in out
    assert "    group g1 (3): g1s0, g1s1, g1s2" in out


def test_not_checkable_is_printed(tmp_path, capsys):
    run = correct_group()
    run.records = [r for r in run.records if r.KIND != "reward"]
    main(["check", _write(tmp_path, run)])
    assert "reward_bound_to_own_tokens: not checkable: missing reward records" in capsys.readouterr().out


def test_policy_option_changes_the_verdict(tmp_path):
    run = Run()
    run.admit("a")
    run.generate(["a"])
    run.reward("a")
    run.consume(["a"], trainer_version=3)
    path = _write(tmp_path, run)
    assert main(["check", path]) == 1
    assert main(["check", path, "--policy", str(POLICIES / "inflight-updates.toml")]) == 0


def test_unreadable_trace_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x93garbage")
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tracesim: error:") and str(bad) in err and "Traceback" not in err


def test_bad_policy_exits_2(tmp_path, capsys):
    f = tmp_path / "p.toml"
    f.write_text("nope = true\n")
    assert main(["check", _write(tmp_path, correct_group()), "--policy", str(f)]) == 2
    assert "unknown policy key 'nope'" in capsys.readouterr().err


def test_only_restricts_the_invariants(tmp_path, capsys):
    assert main(["check", _write(tmp_path, _swapped_reward()), "--only", "steps_well_formed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checked"] == ["steps_well_formed"]
