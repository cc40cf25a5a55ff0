"""A recording's RL loop on its replay (tracesim/sim/replay_loop.py): rewards, consumption and drops come back,
the replay checks as the recording does, the loop policy is inferred from the recording (or given), and
reward perturbations act on it."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, TRACES
from tracesim.check import check_trace
from tracesim.cli.main import main
from tracesim.format import read_trace
from tracesim.format.digest import records_digest
from tracesim.format.records import RewardBound, SampleDropped, TrainerConsumed
from tracesim.sim import perturb as P
import tracesim.sim.replay as replay_module
from tracesim.sim.replay import replay
from tracesim.sim.recorded_loop import infer_loop_policy, resolve_loop_policy
from tracesim.sim.scenario import LoopPolicy

ABORT, KEEP = TRACES / "vllm-abort.msgpack", TRACES / "vllm-keep.msgpack"
LOOP_KINDS = (RewardBound, TrainerConsumed, SampleDropped)
EXPECTED = json.loads((REPO / "tests" / "expected_checks.json").read_text())


@pytest.fixture(scope="module")
def recordings():
    return {"abort": read_trace(ABORT), "keep": read_trace(KEEP)}


@pytest.fixture(scope="module")
def replays(recordings):
    return {name: replay(t) for name, t in recordings.items()}


class _NoLoop:
    """Stands in for ReplayLoop: no recording has a loop."""

    @staticmethod
    def from_recording(*_args, **_kwargs):
        return None


def _count(trace, kind) -> int:
    return sum(1 for r in trace.records if type(r) is kind)


@pytest.mark.parametrize("name", ["abort", "keep"])
def test_replay_holds_the_recorded_loop_and_leaves_the_engine_records_alone(recordings, replays, name,
                                                                            monkeypatch):
    recorded, replayed = recordings[name], replays[name]
    for kind in LOOP_KINDS:
        assert _count(replayed, kind) == _count(recorded, kind) > 0, kind.__name__
    # the replay as it is without a recorded loop (ReplayLoop is a C type in the compiled build: the replay's
    # name for it is replaced)
    monkeypatch.setattr(replay_module, "ReplayLoop", _NoLoop)
    without = replay(recorded)
    assert not any(type(r) in LOOP_KINDS for r in without.records)
    assert [r for r in replayed.records if type(r) not in LOOP_KINDS] == without.records


# recorded without token ids, logprobs and weight fingerprints: what the invariants on them need is missing
NO_TOKENS = {"client_tokens_match_engine", "behaviour_logprobs_match_returned", "logprobs_processed_as_trained",
             "served_weights_match_published", "behaviour_logprobs_from_sampling_policy"}


def test_replay_of_the_correct_recording_checks_clean(replays):
    report = check_trace(replays["abort"])
    assert report.violations == [], [v.message for v in report.violations[:5]]
    assert set(report.not_checkable) == NO_TOKENS  # recorded without token ids


def test_replay_of_the_buggy_recording_shows_the_recordings_violations(recordings, replays):
    rec, rep = check_trace(recordings["keep"]), check_trace(replays["keep"])
    assert rep.violated() == rec.violated() == EXPECTED["vllm-keep.msgpack"][0]["violated"]
    assert set(rep.not_checkable) == NO_TOKENS  # recorded without token ids
    assert {(v.invariant, v.req_id) for v in rep.violations} == {(v.invariant, v.req_id) for v in rec.violations}


def test_the_inferred_loop_policy_is_what_the_recordings_did(recordings):
    abort, why_abort = infer_loop_policy(recordings["abort"])
    assert (abort.version_label, abort.version_read, abort.reward_match) == ("spans", "once", "id")
    assert why_abort[0].startswith("version_label = spans: ambiguous, assumed spans")
    assert [line.split(" =")[0] for line in why_abort] == ["version_label", "version_read", "reward_match"]
    keep, why_keep = infer_loop_policy(recordings["keep"])
    assert (keep.version_label, keep.version_read, keep.reward_match) == ("admission", "once", "id")
    assert "admission" in why_keep[0] and "ambiguous" not in why_keep[0]


def test_a_given_loop_table_overrides_the_inferred_settings(recordings, tmp_path):
    f = tmp_path / "late.toml"
    f.write_text('[loop]\nversion_read = "late"\n')
    policy, lines = resolve_loop_policy(recordings["abort"], f)
    assert (policy.version_label, policy.version_read, policy.reward_match) == ("spans", "late", "id")
    assert lines[1] == f"version_read = late: given in {f} (the recording suggests once)"
    assert resolve_loop_policy(read_trace(TRACES / "vllm-async-standalone.msgpack"))[0] is None


def test_a_reward_delayed_past_an_update_breaks_the_label_only_with_a_late_read(recordings, replays):
    # 0_g9's reward was bound during the second update (after the pause, before the version was set): 60 ms
    # later it lands after the new version is set. Read once, its label stays; read late, it takes the new one.
    trace = recordings["abort"]
    late = LoopPolicy(version_label="spans", version_read="late", reward_match="id")
    delay = (P.RewardDelay("0_g9", 60),)
    assert check_trace(replay(trace, loop_policy=late)).violations == []
    broken = replay(trace, loop_policy=late, perturbations=delay)
    assert records_digest(broken.records) != records_digest(replays["abort"].records)
    assert records_digest(broken.records) == records_digest(replay(trace, loop_policy=late,
                                                                   perturbations=delay).records)
    bad = [v for v in check_trace(broken).violations if v.invariant == "tokens_from_labelled_version"]
    assert [v.req_id for v in bad] == ["0_g9"]
    once = replay(trace, perturbations=delay)
    assert records_digest(once.records) != records_digest(replays["abort"].records)  # the reward moved
    assert check_trace(once).violations == []


def test_arrival_matching_binds_out_of_order_rewards_to_the_wrong_samples(recordings):
    # The recorded reward workers finish out of order: paired by completion order, results go to other samples.
    trace = replay(recordings["abort"], loop_policy=LoopPolicy(reward_match="arrival"))
    assert "reward_bound_to_own_tokens" in check_trace(trace).violated()


def test_explore_with_a_late_read_finds_the_reward_crossing_and_repro_reproduces_it(tmp_path, capsys):
    loop = tmp_path / "late.toml"
    loop.write_text('[loop]\nversion_read = "late"\n')
    out = tmp_path / "cex"
    rc = main(["explore", str(ABORT), "--loop", str(loop), "--budget", "64", "--workers", "1", "--no-shrink",
               "--no-plot", "--no-progress", "--json", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "version_label = spans: ambiguous, assumed spans" in captured.err
    assert f"version_read = late: given in {loop}" in captured.err
    doc = json.loads(captured.out)
    assert doc["base"]["loop"] == str(loop)
    cex = next(c for c in doc["counterexamples"]
               if c["invariant"] == "tokens_from_labelled_version" and "reward" in c["signature"])
    assert f"--loop {loop}" in cex["repro"]
    assert f'loop = "{loop}"' in open(cex["files"]["repro"]).read()
    assert main(["repro", cex["files"]["repro"]]) == 1
    assert "still fails: tokens_from_labelled_version" in capsys.readouterr().out
    # the same perturbations on the loop as recorded (labels read once) do not break the labels
    assert main(["repro", "--trace", str(ABORT), "--perturb", "; ".join(cex["perturbations"]),
                 "--expect", "tokens_from_labelled_version"]) == 0


def test_explore_and_replay_print_the_inferred_loop_policy(tmp_path, capsys):
    assert main(["explore", str(ABORT), "--budget", "1", "--workers", "1", "--no-progress", "-o",
                 str(tmp_path / "cex")]) == 0
    err = capsys.readouterr().err
    assert "version_label = spans: ambiguous" in err and "reward_match = id: every one of the 68" in err
    assert main(["replay", str(KEEP), "-o", str(tmp_path / "keep.msgpack"), "--no-progress"]) == 0
    assert "version_label = admission:" in capsys.readouterr().err
    assert _count(read_trace(tmp_path / "keep.msgpack"), RewardBound) == 85


def test_a_bad_loop_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[loop]\nversion_read = "sometimes"\n')
    assert main(["replay", str(ABORT), "--loop", str(bad), "-o", str(tmp_path / "x.msgpack")]) == 2
    assert "version_read" in capsys.readouterr().err
    assert main(["explore", "--scenario", str(REPO / "scenarios" / "default.toml"), "--loop", str(bad),
                 "--budget", "1"]) == 2
    assert "--loop applies to a recorded TRACE" in capsys.readouterr().err


def test_the_recorded_loop_is_gathered_once_per_trace_for_inference_and_replay(monkeypatch):
    # `tracesim replay` infers the loop policy, then replays the loop: one pass over the recording, not two;
    # a trace whose records were replaced is gathered again.
    from tracesim.sim import recorded_loop as rl

    built = []
    init = rl.Recorded.__init__
    monkeypatch.setattr(rl.Recorded, "__init__", lambda self, *a: (built.append(1), init(self, *a))[1])
    trace = read_trace(ABORT)
    policy, _lines = resolve_loop_policy(trace)
    first = replay(trace, loop_policy=policy)
    assert len(built) == 1
    assert records_digest(replay(trace, loop_policy=policy).records) == records_digest(first.records)
    assert len(built) == 1
    trace.records = list(trace.records)
    resolve_loop_policy(trace)
    assert len(built) == 2
