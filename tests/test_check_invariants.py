"""For every invariant: a minimal hand-built trace that violates it and a near-identical one that does not."""

from __future__ import annotations

import dataclasses

import pytest
from check_builder import Run, correct_group

from tracesim.check import Policy, check_trace
from tracesim.format import (
    CacheReset, OutputDelivered, OutReq, Paused, RequestAdded, Resumed, RewardBound, SchedReq, StepExecuted,
    StepScheduled, StepUpdated, TrainerConsumed, VersionSpan, WeightsUpdated, token_digest,
)


def violations(run: Run, invariant: str, policy: Policy | None = None) -> list:
    report = check_trace(run.trace(), policy, only=[invariant])
    assert invariant in report.checked, report.not_checkable
    return [v for v in report.violations if v.invariant == invariant]


def is_req(req_id):
    return lambda r: getattr(r, "req_id", None) == req_id


# --- reward_bound_to_own_tokens ------------------------------------------------------------------------

def _rewarded_pair(swap: bool) -> Run:
    run = Run()
    for i, r in enumerate(("a", "b")):
        run.admit(r, "g0", i, 2)
    run.generate(["a", "b"])
    run.reward("a", scored="b" if swap else None)
    run.reward("b")
    run.consume(["a", "b"])
    return run


def test_reward_scored_on_another_samples_tokens_is_reported_with_whose_tokens():
    (v,) = violations(_rewarded_pair(swap=True), "reward_bound_to_own_tokens")
    assert v.req_id == "a" and "tokens of b" in v.message
    assert [e.kind for e in v.events] == ["deliver", "reward"]


def test_reward_scored_on_own_tokens_passes():
    assert violations(_rewarded_pair(swap=False), "reward_bound_to_own_tokens") == []


def test_reward_bound_before_the_output_finished_is_reported():
    run = _rewarded_pair(swap=False)
    i = run.find(RewardBound, is_req("a"))
    run.records.insert(run.find(OutputDelivered, lambda r: r.req_id == "a" and r.finished), run.records.pop(i))
    run.replace(RewardBound, is_req("a"), t_ns=run.records[run.find(OutputDelivered, is_req("a"))].t_ns)
    (v,) = violations(run, "reward_bound_to_own_tokens")
    assert "had not finished" in v.message


# --- consumed_sample_matches_binding -------------------------------------------------------------------

def test_trainer_using_another_reward_than_the_bound_one_is_reported():
    run = correct_group()
    tc = run.records[run.find(TrainerConsumed)]
    run.replace(TrainerConsumed, samples=(tc.samples[0]._replace(reward=0.9),) + tc.samples[1:])
    (v,) = violations(run, "consumed_sample_matches_binding")
    assert v.req_id == "g0s0" and "reward 0.9" in v.message


def test_trainer_using_the_bound_reward_passes():
    assert violations(correct_group(), "consumed_sample_matches_binding") == []


def test_trainer_training_on_other_tokens_is_reported():
    run = correct_group()
    tc = run.records[run.find(TrainerConsumed)]
    swapped = (tc.samples[0]._replace(digest=tc.samples[1].digest),) + tc.samples[1:]
    run.replace(TrainerConsumed, samples=swapped)
    (v,) = violations(run, "consumed_sample_matches_binding")
    assert "tokens of g0s1" in v.message


# --- tokens_from_labelled_version ----------------------------------------------------------------------

def test_step_run_by_other_weights_than_the_label_is_reported():
    run = correct_group()
    run.replace(StepExecuted, lambda r: r.step == 1, version=1)
    run.replace(StepUpdated, lambda r: r.step == 1, version=1)
    vs = violations(run, "tokens_from_labelled_version")
    assert {v.req_id for v in vs} == {"g0s0", "g0s1"}
    assert all("version 1" in v.message and "step 1" in v.message for v in vs)


def test_label_differing_from_the_producing_version_is_reported_without_spans():
    run = correct_group()
    run.replace(StepExecuted, lambda r: r.step == 1, version=1)
    for i, r in enumerate(run.records):
        if isinstance(r, OutputDelivered):
            run.records[i] = r._replace(spans=None)
    vs = violations(run, "tokens_from_labelled_version")
    assert vs and all("produced by version 1 at step 1" in v.message and "labelled with version 0" in v.message
                      for v in vs)


def test_steps_run_by_the_labelled_weights_pass():
    assert violations(correct_group(), "tokens_from_labelled_version") == []


def test_spans_that_disagree_with_the_engines_version_are_reported():
    run = correct_group()
    run.replace(StepUpdated, lambda r: r.step == 2, version=0)
    run.replace(StepExecuted, lambda r: r.step == 2, version=1)  # the stamp hides a forward pass on new weights
    vs = violations(run, "tokens_from_labelled_version")
    assert vs and all("delivered spans say version 0" in v.message for v in vs)


def _mixed(spans_kept: bool) -> Run:
    """A sample that keeps decoding across a weight update (keep-mode pause)."""
    run = Run()
    run.admit("a", "g0", 0, 1)
    run.engine_step(prefill=["a"])
    run.update_weights(reset=None)
    run.engine_step(decode=["a"], finish=["a"], deliver=False)
    spans = (VersionSpan(0, 0, 1), VersionSpan(1, 1, 2)) if spans_kept else None
    run.emit(OutputDelivered(run.at(), "a", 1, 1, True, "stop", spans, token_digest(run.out["a"])))
    run.reward("a")
    run.consume(["a"])
    return run


def test_mixed_versions_violate_the_strict_policy():
    (v,) = violations(_mixed(spans_kept=True), "tokens_from_labelled_version")
    assert "produced by version 1" in v.message


def test_mixed_versions_with_spans_pass_when_the_policy_allows_them():
    assert violations(_mixed(True), "tokens_from_labelled_version", Policy(allow_mixed_versions=True)) == []


def test_mixed_versions_without_spans_violate_even_when_allowed():
    (v,) = violations(_mixed(False), "tokens_from_labelled_version", Policy(allow_mixed_versions=True))
    assert "keeps no version spans" in v.message


# --- no_stale_kv ---------------------------------------------------------------------------------------

def _across_update(reset_running: bool) -> Run:
    run = Run()
    run.admit("a")
    run.engine_step(prefill=["a"])
    run.update_weights(reset=True, reset_running=reset_running)
    run.engine_step(decode=["a"], finish=["a"])
    return run


def test_decoding_on_kv_of_old_weights_is_stale():
    (v,) = violations(_across_update(reset_running=False), "no_stale_kv")
    assert v.req_id == "a" and v.step == 1 and "computed by version 0" in v.message


def test_running_kv_reset_with_the_cache_is_not_stale():
    assert violations(_across_update(reset_running=True), "no_stale_kv") == []


def _prefix_hit_after_update(reset_ok: bool) -> Run:
    run = Run()
    run.admit("a", prompt="p")
    run.engine_step(prefill=["a"], finish=["a"])
    run.update_weights(reset=reset_ok)
    run.admit("b", prompt="p")
    run.engine_step(prefill=["b"], finish=["b"], cached={"b": 8})
    return run


def test_prefix_cache_hit_after_a_failed_reset_is_stale():
    (v,) = violations(_prefix_hit_after_update(reset_ok=False), "no_stale_kv")
    assert v.req_id == "b" and "prefix-cached" in v.message


def test_prefix_cache_hit_after_an_effective_reset_is_not_stale():
    assert violations(_prefix_hit_after_update(reset_ok=True), "no_stale_kv") == []


def test_stale_kv_is_waived_when_the_policy_allows_it():
    report = check_trace(_across_update(False).trace(), Policy(allow_stale_kv=True))
    assert "no_stale_kv" in report.waived and "no_stale_kv" not in report.violated()


# --- tokens_delivered_exactly_once ---------------------------------------------------------------------

def test_a_frame_that_skips_a_token_is_reported():
    run = correct_group()
    run.replace(OutputDelivered, lambda r: r.req_id == "g0s0" and r.start_idx == 1, start_idx=2, num_tokens=0)
    run.replace(OutputDelivered, lambda r: r.req_id == "g0s0" and r.start_idx == 2, nth=1, start_idx=2)
    vs = violations(run, "tokens_delivered_exactly_once")
    assert vs and vs[0].req_id == "g0s0" and "tokens 1..2 were never delivered" in vs[0].message


def test_contiguous_frames_pass():
    assert violations(correct_group(), "tokens_delivered_exactly_once") == []


def test_a_frame_delivered_twice_is_reported():
    run = correct_group()
    i = run.find(OutputDelivered, lambda r: r.req_id == "g0s1" and r.start_idx == 1)
    run.records.insert(i + 1, run.records[i])
    (v,) = violations(run, "tokens_delivered_exactly_once")
    assert "tokens 1..2 were delivered again" in v.message


def test_client_receiving_fewer_tokens_than_the_engine_produced_is_reported():
    run = correct_group()
    run.replace(StepUpdated, lambda r: r.step == 1, outs=(OutReq("g0s0", 2), OutReq("g0s1", 1)))
    (v,) = violations(run, "tokens_delivered_exactly_once")
    assert v.req_id == "g0s0" and "1 fewer token(s) than the engine produced (4)" in v.message


# --- output_applies_to_scheduling_incarnation ----------------------------------------------------------

def _in_flight_across(reset_running: bool) -> Run:
    """Async-style: a is preempted (by a cache reset of running requests, or by KV pressure in step 1) while
    step 0's output for it is still in flight; the output is applied with its token."""
    run = Run()
    run.admit("a")
    run.admit("b", idx=1)
    run.emit(StepScheduled(run.at(), run.at(), 0, (SchedReq("a", 8, 0), SchedReq("b", 8, 0))))
    if reset_running:
        run.emit(CacheReset(run.at(), True, "engine", reset_running=True))
        run.emit(StepScheduled(run.at(), run.at(), 1, ()))
    else:
        run.emit(StepScheduled(run.at(), run.at(), 1, (SchedReq("b", 0, 1),), preempted=("a",)))
    run.emit(StepUpdated(run.at(), run.at(), 0, (OutReq("a", 1, stale=True), OutReq("b", 1))))
    return run


def test_output_applied_after_a_cache_reset_preempted_its_request_is_reported():
    vs = violations(_in_flight_across(reset_running=True), "output_applies_to_scheduling_incarnation")
    assert {v.req_id for v in vs} == {"a", "b"} and all("a cache reset preempted it" in v.message for v in vs)
    assert [e.kind for e in vs[0].events] == ["sched", "cache_reset", "upd"]


def test_output_applied_after_a_plain_preemption_passes():  # vLLM delivers it: the token is valid
    assert violations(_in_flight_across(reset_running=False), "output_applies_to_scheduling_incarnation") == []


def test_output_dropped_after_a_cache_reset_passes():
    run = _in_flight_across(reset_running=True)
    run.replace(StepUpdated, outs=(OutReq("a", 0, stale=True), OutReq("b", 0, stale=True)))
    assert violations(run, "output_applies_to_scheduling_incarnation") == []


def _readded_in_flight(readded: bool, abort_side: str = "client") -> Run:
    """Step 0's output for a arrives after a was aborted and (or not) added again under the same id."""
    run = Run()
    run.admit("a")
    run.emit(StepScheduled(run.at(), run.at(), 0, (SchedReq("a", 8, 0),)))
    run.abort(["a"], side=abort_side)
    run.admit("a" if readded else "b")
    run.emit(StepUpdated(run.at(), run.at(), 0, (OutReq("a", 1, stale=True),)))
    return run


def test_old_output_landing_on_a_readded_request_is_reported_even_if_stale():
    (v,) = violations(_readded_in_flight(readded=True), "output_applies_to_scheduling_incarnation")
    assert "added again under the same id" in v.message


def test_old_output_for_an_aborted_request_is_reported():
    (v,) = violations(_readded_in_flight(readded=False, abort_side="engine"), "output_applies_to_scheduling_incarnation")
    assert "although it was aborted" in v.message


def test_client_abort_sent_while_a_step_is_in_flight_does_not_void_its_output():
    # The client asked while step 0 was in flight; the engine only processes the abort after update(0), so
    # step 0's token was applied to the incarnation that scheduled it (judged at the time the engine acted).
    assert violations(_readded_in_flight(readded=False, abort_side="client"),
                      "output_applies_to_scheduling_incarnation") == []


def test_output_for_a_request_the_step_did_not_schedule_is_reported():
    run = correct_group()
    run.replace(StepScheduled, lambda r: r.step == 1, reqs=(SchedReq("g0s0", 0, 1),))
    (v,) = violations(run, "output_applies_to_scheduling_incarnation")
    assert v.req_id == "g0s1" and "did not schedule" in v.message


# --- no_weight_write_during_forward --------------------------------------------------------------------

def _write_near_forward(overlap: bool) -> Run:
    run = correct_group()
    ex = run.records[run.find(StepExecuted, lambda r: r.step == 2)]
    start = ex.end_ns - 1 if overlap else ex.end_ns
    run.emit(WeightsUpdated(start, start + 1000, 1, "client"))
    return run


def test_weight_write_overlapping_a_forward_pass_is_reported():
    (v,) = violations(_write_near_forward(True), "no_weight_write_during_forward")
    assert v.step == 2 and "from exec" in v.message


def test_weight_write_right_after_a_forward_pass_passes():
    assert violations(_write_near_forward(False), "no_weight_write_during_forward") == []


def test_without_exec_records_the_sched_to_update_window_is_used():
    run = _write_near_forward(True)
    run.records = [r for r in run.records if not isinstance(r, StepExecuted)]
    (v,) = violations(run, "no_weight_write_during_forward")
    assert "sched..upd" in v.message


# --- sample_ends_exactly_once --------------------------------------------------------------------------

def _aborted(dropped: bool) -> Run:
    run = correct_group()
    run.admit("x", "g1")
    run.engine_step(prefill=["x"])
    run.abort(["x"], side="engine")
    if dropped:
        run.drop(["x"])
    return run


def test_aborted_sample_never_accounted_for_is_reported():
    (v,) = violations(_aborted(dropped=False), "sample_ends_exactly_once")
    assert v.req_id == "x" and "never consumed or dropped" in v.message


def test_aborted_sample_that_is_dropped_passes():
    assert violations(_aborted(dropped=True), "sample_ends_exactly_once") == []


def test_unended_sample_passes_when_the_trace_may_be_cut_off():
    policy = Policy(samples_must_end=False)
    assert violations(_aborted(dropped=False), "sample_ends_exactly_once", policy) == []


def _requeued(same_slot: bool) -> Run:
    """Sample x (group g1, slot 0) is aborted by the engine; the loop requeues slot 0 (or 1) under a new id."""
    run = _aborted(dropped=False)
    run.admit("x-retry", "g1", 0 if same_slot else 1)
    return run


def test_aborted_sample_requeued_under_a_fresh_id_is_accounted_for():
    vs = violations(_requeued(same_slot=True), "sample_ends_exactly_once", Policy(samples_must_end=True))
    assert [v.req_id for v in vs] == ["x-retry"]  # the retry itself is still in flight


def test_aborted_sample_whose_slot_is_not_requeued_is_reported():
    vs = violations(_requeued(same_slot=False), "sample_ends_exactly_once")
    assert sorted(v.req_id for v in vs) == ["x", "x-retry"]


def test_sample_consumed_twice_is_reported():
    run = correct_group()
    run.consume(["g0s1"])
    (v,) = violations(run, "sample_ends_exactly_once")
    assert v.req_id == "g0s1" and "ended 2 times" in v.message


# --- request_ids_live_once -----------------------------------------------------------------------------

def _readded(before_finish: bool) -> Run:
    run = Run()
    run.admit("a")
    run.engine_step(prefill=["a"], finish=() if before_finish else ["a"])
    if before_finish:
        run.drop(["a"])  # the client account is fine; the engine still runs a
    run.admit("a")
    run.engine_step(decode=["a"] if before_finish else (), prefill=() if before_finish else ["a"], finish=["a"])
    run.reward("a")
    run.consume(["a"])
    return run


def test_id_added_again_while_still_running_in_the_engine_is_reported():
    (v,) = violations(_readded(before_finish=True), "request_ids_live_once")
    assert v.req_id == "a" and "engine side" in v.message


def test_id_reused_after_its_request_finished_passes():
    assert violations(_readded(before_finish=False), "request_ids_live_once") == []


# --- groups_whole_and_consistent -----------------------------------------------------------------------

def test_group_consumed_with_a_member_missing_is_reported():
    run = correct_group(size=3)
    tc = run.records[run.find(TrainerConsumed)]
    run.replace(TrainerConsumed, samples=tc.samples[:2])
    run.drop(["g0s2"])
    (v,) = violations(run, "groups_whole_and_consistent")
    assert "2 of its 3 members" in v.message and "missing sample_idx [2]" in v.message


def test_group_consumed_whole_passes():
    assert violations(correct_group(size=3), "groups_whole_and_consistent") == []


def test_group_split_across_train_steps_is_reported_unless_allowed():
    run = correct_group(size=2)
    tc = run.records[run.find(TrainerConsumed)]
    run.replace(TrainerConsumed, samples=tc.samples[:1])
    run.emit(TrainerConsumed(run.at(), 1, tc.samples[1:], 0))
    (v,) = violations(run, "groups_whole_and_consistent")
    assert "split across train steps [0, 1]" in v.message
    assert violations(run, "groups_whole_and_consistent", Policy(groups_consumed_together=False)) == []


def test_group_members_with_different_prompts_are_reported():
    run = correct_group()
    run.replace(RequestAdded, lambda r: r.req_id == "g0s1" and r.side == "client", prompt_digest="f" * 16)
    (v,) = violations(run, "groups_whole_and_consistent")
    assert "different prompt digests" in v.message


# --- version_lag_within_bound --------------------------------------------------------------------------

def _lagging(trainer_version: int) -> Run:
    run = Run()
    run.admit("a")
    run.generate(["a"])
    run.reward("a")
    run.consume(["a"], trainer_version=trainer_version)
    return run


def test_sample_older_than_the_lag_bound_is_reported():
    (v,) = violations(_lagging(2), "version_lag_within_bound", Policy(max_version_lag=1))
    assert "lag 2 exceeds the bound 1" in v.message


def test_sample_within_the_lag_bound_passes():
    assert violations(_lagging(1), "version_lag_within_bound", Policy(max_version_lag=1)) == []


def test_sample_newer_than_the_trainer_is_reported():
    (v,) = violations(_newer(), "version_lag_within_bound")
    assert "newer than the trainer" in v.message


def _newer() -> Run:
    """The engine ran version 1 while the trainer (and the label) say 0."""
    run = _lagging(0)
    for cls in (StepExecuted, StepUpdated):
        for i, r in enumerate(run.records):
            if isinstance(r, cls):
                run.records[i] = r._replace(version=1)
    return run


# --- steps_well_formed ---------------------------------------------------------------------------------

def test_a_skipped_step_index_is_reported():
    run = correct_group()
    for cls in (StepScheduled, StepExecuted, StepUpdated):
        run.replace(cls, lambda r: r.step == 2, step=3)
    (v,) = violations(run, "steps_well_formed")
    assert "step 3 was scheduled right after step 1" in v.message


def test_consecutive_steps_pass():
    assert violations(correct_group(), "steps_well_formed") == []


def test_an_update_for_a_step_never_scheduled_is_reported():
    run = correct_group()
    run.emit(StepUpdated(run.at(), run.at(), 9, ()))
    (v,) = violations(run, "steps_well_formed")
    assert "never scheduled" in v.message and v.step == 9


# --- not checkable -------------------------------------------------------------------------------------

def test_engine_only_trace_says_what_is_missing_for_client_invariants():
    run = Run()
    run.admit("a", client=False)
    run.generate(["a"])
    run.records = [r for r in run.records if not isinstance(r, OutputDelivered)]
    report = check_trace(run.trace())
    assert report.not_checkable["reward_bound_to_own_tokens"].startswith("missing reward records")
    assert report.not_checkable["tokens_delivered_exactly_once"].startswith("missing output deliveries")
    assert report.not_checkable["sample_ends_exactly_once"].startswith("missing client-side admissions")
    assert {"steps_well_formed", "output_applies_to_scheduling_incarnation"} <= set(report.checked)
    assert not report.violations


def test_rewards_without_digests_are_not_checkable_rather_than_passing():
    run = correct_group()
    for i, r in enumerate(run.records):
        if isinstance(r, RewardBound):
            run.records[i] = r._replace(digest=None)
    report = check_trace(run.trace())
    assert report.not_checkable["reward_bound_to_own_tokens"] == \
        "missing reward digests (every RewardBound.digest is null)"


def test_every_invariant_is_checked_on_a_complete_correct_run():
    from tracesim.format import SampleLogprobs, WeightsFingerprint

    run = correct_group()
    run.update_weights()
    for side in ("trainer", "engine"):
        run.emit(WeightsFingerprint(run.at(), run.version, "f1", side, 0, "slices-v1"))
    correct_group(run, "g1", size=3)
    for i in range(3):
        run.emit(SampleLogprobs(run.at(), f"g1s{i}", "behaviour", "trainer", 0, None, None, run.version))
    report = check_trace(run.trace(), Policy(pause_keeps_samples=True))  # the one invariant waived by default
    assert report.violations == [] and report.not_checkable == {}
    from tracesim.check import INVARIANTS
    assert report.checked == list(INVARIANTS)


def test_violation_json_has_the_documented_keys():
    report = check_trace(_rewarded_pair(swap=True).trace())
    (d,) = [v.to_json() for v in report.violations]
    assert {"invariant", "req_id", "step", "t_ns", "message", "events"} <= set(d)
    assert d["events"][0]["kind"] == "deliver"


def test_unknown_invariant_name_is_refused():
    with pytest.raises(ValueError, match="unknown invariant"):
        check_trace(correct_group().trace(), only=["no_such_thing"])


# --- absence: what the trace proves must exist -----------------------------------------------------------

def test_a_sample_consumed_before_any_reward_is_reported():
    run = correct_group()
    run.remove(RewardBound, is_req("g0s1"))
    (v,) = violations(run, "reward_bound_before_consumption")
    assert v.req_id == "g0s1" and "no reward was ever bound" in v.message
    assert violations(correct_group(), "reward_bound_before_consumption") == []


def test_a_reward_bound_only_after_consumption_is_reported_with_the_delay():
    run = correct_group()
    i = run.find(RewardBound, is_req("g0s0"))
    rw = run.records.pop(i)
    run.records.append(rw._replace(t_ns=run.at(2_000)))  # 2 ms after the consumption
    (v,) = violations(run, "reward_bound_before_consumption")
    assert v.req_id == "g0s0" and "later" in v.message
    assert [e.kind for e in v.events] == ["deliver", "consume", "reward"]


def test_a_finished_output_that_never_reaches_the_client_is_reported():
    run = correct_group()
    run.records = [r for r in run.records if r.KIND not in ("reward", "consume")]
    lost = run.find(OutputDelivered, lambda r: r.req_id == "g0s0" and r.finished)
    del run.records[lost]
    (v,) = violations(run, "finished_output_delivered")
    assert v.req_id == "g0s0" and v.step == 2 and "was lost" in v.message
    assert [e.kind for e in v.events] == ["add", "upd"]
    # a recording cut off mid-run: the output may still have been on its way
    assert violations(run, "finished_output_delivered", Policy(samples_must_end=False)) == []


def test_a_sample_rewarded_without_its_final_output_is_reported():
    run = correct_group()
    run.remove(OutputDelivered, lambda r: r.req_id == "g0s0" and r.finished)
    (v,) = violations(run, "finished_output_delivered")
    assert v.req_id == "g0s0" and "without its final output" in v.message


def test_a_token_changed_between_engine_and_client_is_reported_at_its_frame():
    run = correct_group(n_tokens=4)
    # the client got another token at position 2; its digests are computed on what it got
    run.out["g0s1"][2] += 1000
    run.replace(OutputDelivered, lambda r: r.req_id == "g0s1" and r.finished, digest=token_digest(run.out["g0s1"]))
    (v,) = violations(run, "client_tokens_match_engine")
    assert v.req_id == "g0s1" and v.step == 3 and "tokens 3..4" in v.message
    assert violations(correct_group(n_tokens=4), "client_tokens_match_engine") == []


def test_token_comparison_needs_engine_token_ids():
    run = correct_group()
    for i, r in enumerate(run.records):
        if isinstance(r, StepUpdated):
            run.records[i] = r._replace(outs=tuple(o._replace(token_ids=None) for o in r.outs))
    report = check_trace(run.trace(), only=["client_tokens_match_engine"])
    assert report.not_checkable["client_tokens_match_engine"].startswith("missing token ids")


def test_a_step_never_updated_mid_trace_is_reported_and_the_tail_is_not():
    run = correct_group(n_tokens=4)
    run.remove(StepUpdated, lambda r: r.step == 1)
    (v,) = violations(run, "steps_well_formed")
    assert v.step == 1 and "never applied (step 3's was)" in v.message
    tail = correct_group(n_tokens=4)
    tail.remove(StepUpdated, lambda r: r.step == 3)  # the last step: in flight when the recording stopped
    assert violations(tail, "steps_well_formed") == []
    assert check_trace(tail.trace()).in_flight_at_end == {0: [3]}


def test_a_finished_sample_superseded_by_a_readmission_is_not_exempt():
    run = correct_group()
    run.admit("g0s0", "g0", 0, 2)  # the same id again, after it finished and was consumed: fine
    run.generate(["g0s0"])
    run.reward("g0s0")
    run.consume(["g0s0"])
    assert violations(run, "sample_ends_exactly_once") == []
    run = Run()
    run.admit("a", "ga", 0, 1)
    run.generate(["a"])  # finished, never consumed ...
    run.admit("a", "ga", 0, 1)  # ... and admitted again under its id
    run.generate(["a"])
    run.reward("a")
    run.consume(["a"])
    (v,) = violations(run, "sample_ends_exactly_once")
    assert v.req_id == "a" and "admitted again" in v.message


# --- causes: the record that explains a violation comes first ----------------------------------------------

def test_a_refused_reset_is_named_as_the_cause_of_stale_kv():
    run = correct_group()
    run.update_weights(reset=False)  # the engine refused the reset (blocks in use) and the loop went on
    run.admit("late", "g1", 0, 1)
    run.engine_step(prefill=["late"], cached={"late": 8})
    (v,) = violations(run, "no_stale_kv")
    assert v.cause.startswith("the cache reset at") and "was refused" in v.cause
    assert [e.kind for e in v.events] == ["weights", "cache_reset", "sched"]


def test_an_admission_during_a_pause_is_named_as_the_cause_of_a_wrong_label():
    run = correct_group()
    run.emit(Paused(run.at(), "client", "keep", False))
    run.admit("p", "gp", 0, 1)  # labelled with the version before the update the pause is for
    run.version += 1
    run.emit(WeightsUpdated(run.at(), run.at(1000), run.version, "client"))
    run.emit(Resumed(run.at(), "client"))
    run.generate(["p"])
    run.reward("p")
    run.consume(["p"])
    (v,) = violations(run, "tokens_from_labelled_version")
    assert v.cause.startswith("admitted during the keep pause") and v.group_id == "gp"
    assert [e.kind for e in v.events][:2] == ["pause", "add"]


def test_prefix_digests_equal_the_digest_of_each_prefix():
    from tracesim.format.digest import prefix_digests

    ids = list(range(1000, 1300))
    ends = [0, 1, 7, 7, 150, 300, 20]  # increasing, repeated, and one going back
    assert prefix_digests(ids, ends) == [token_digest(ids[:e]) for e in ends]


def test_a_token_changed_on_the_client_side_of_a_real_recording_is_caught():
    from conftest import TRACES

    from tracesim.check.index import build_index
    from tracesim.format import read_trace

    trace = read_trace(TRACES / "vllm-abort-tokens.msgpack")
    assert check_trace(trace, only=["client_tokens_match_engine"]).violations == []
    ix = build_index(trace)
    c = next(c for c in ix.client_order if c.final is not None and c.engine is not None and c.final.num_tokens)
    ids = [t for _s, _n, upd in c.engine.outs for o in upd.outs if o.req_id == c.req_id for t in o.token_ids]
    ids[len(ids) // 2] += 1  # what the client got; its digests are computed on it
    records = [r._replace(digest=token_digest(ids[:r.start_idx + r.num_tokens]))
               if r is c.final else r for r in trace.records]
    report = check_trace(dataclasses.replace(trace, records=records), only=["client_tokens_match_engine"])
    (v,) = report.violations
    assert v.req_id == c.req_id and "the engine appended other tokens" in v.message


def test_a_span_conflict_names_the_step_where_the_spans_start_to_disagree():
    run = correct_group(n_tokens=4)  # tokens 0..4 of g0s0 from steps 0..3, all version 0
    run.replace(OutputDelivered, lambda r: r.req_id == "g0s0" and r.finished,
                spans=(VersionSpan(0, 0, 2), VersionSpan(1, 2, 4)))
    (v,) = violations(run, "tokens_from_labelled_version")
    assert v.step == 2 and "tokens 2..4 of g0s0 with version 0 (from step 2)" in v.message
