"""Client actions of real RL loops (issue 13, docs/simulator.md "RL loop and client policies"): each is a `[loop]`
setting whose bug form fires the invariant named for it while its correct twin is clean over many seeds, and
the vLLM scheduler backend agrees with the native model record for record.

* partial-rollout continuation (`on_abort = "continue"`): an aborted sample resubmitted as prompt + tokens so
  far; `continue_label = "first"` (slime#2092) keeps the first segment's label and no spans;
* request timeouts (`request_timeout_ms`) retried under a fresh id (correct), the same id (the old
  incarnation's in-flight output reaches the new one), or without aborting the first (never accounted).
"""

from __future__ import annotations

import dataclasses

import pytest

from tracesim.check import check_trace
from tracesim.check.policy import Policy
from tracesim.format import Aborted, OutputDelivered, RequestAdded, RewardBound, SampleContinued, TrainerConsumed
from tracesim.format.digest import records_digest
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import LoopPolicy, Scenario, ScenarioError, Workload, scenario_from_dict

SEEDS = range(8)
# Abort-mode pauses abort what is in flight at each update: every update makes continuations.
BASE = Scenario(workload=Workload(num_prompts=16, group_size=4, concurrency=6))
# A partial-rollout loop trains on samples that mix versions, keeping their spans; lag is not at issue here.
PARTIAL = Policy(allow_mixed_versions=True, max_version_lag=None)
LABEL = "tokens_from_labelled_version"
# what a broken join of a continued sample's segments would fire
JOIN = {LABEL, "sample_ends_exactly_once", "groups_whole_and_consistent", "reward_bound_to_own_tokens",
        "consumed_sample_matches_binding", "tokens_delivered_exactly_once", "request_ids_live_once",
        "finished_output_delivered", "version_lag_within_bound"}


def _loop(**loop) -> Scenario:
    return BASE.replace(loop=dataclasses.replace(BASE.loop, **loop))


def _run(scenario: Scenario, seed: int = 0):
    return simulate(RunInputs(scenario, seed=seed))


# --- partial-rollout continuation -------------------------------------------------------------------------


@pytest.mark.parametrize("retry_ids", ["fresh", "reuse"])
def test_continuation_with_spans_is_clean_and_first_label_fires(retry_ids):
    for seed in SEEDS:
        twin = _run(_loop(on_abort="continue", retry_ids=retry_ids), seed)
        assert twin.of(SampleContinued), seed
        assert set(check_trace(twin, PARTIAL).violated()) & JOIN == set(), seed
        bug = _run(_loop(on_abort="continue", continue_label="first", retry_ids=retry_ids), seed)
        assert LABEL in check_trace(bug, PARTIAL).violated(), seed
        assert records_digest(bug.records) != records_digest(twin.records), seed


def test_continuation_carries_the_tokens_so_far_and_the_sample_is_scored_whole():
    trace = _run(_loop(on_abort="continue"), 1)
    cont = trace.of(SampleContinued)[0]
    adds = {(r.req_id, r.side): r for r in trace.of(RequestAdded)}
    first, second = adds[(cont.from_req_id, "client")], adds[(cont.req_id, "client")]
    assert cont.carried_tokens > 0 and cont.req_id != cont.from_req_id
    # the continuation's prompt is the first prompt + the tokens carried; the rest of the output remains
    assert second.prompt_len == first.prompt_len + cont.carried_tokens
    assert second.max_tokens == first.max_tokens - cont.carried_tokens
    assert second.group_id == first.group_id and second.sample_idx == first.sample_idx
    assert second.prompt_digest == first.prompt_digest  # the group's prompt (the groups checker's key)
    assert adds[(cont.req_id, "engine")].prompt_digest != first.prompt_digest  # the engine's: prompt + carried
    frames = [f for f in trace.of(OutputDelivered) if f.req_id == cont.req_id]
    assert frames[0].start_idx == cont.carried_tokens  # positions count on from the carried tokens
    final = next(f for f in frames if f.finished)
    spans = final.spans
    assert spans[0].start == 0 and spans[-1].end == final.start_idx + final.num_tokens
    assert len({s.version for s in spans}) > 1  # the sample spans the update it was continued across
    reward = next(r for r in trace.of(RewardBound) if r.req_id == cont.req_id)
    assert reward.digest == final.digest
    consumed = [s.req_id for tc in trace.of(TrainerConsumed) for s in tc.samples]
    assert cont.req_id in consumed and cont.from_req_id not in consumed


def test_continuation_join_is_what_keeps_the_checkers_quiet():
    """Without the SampleContinued records the checkers see per-segment frames that do not start at 0 and
    rewards on tokens no engine incarnation produced: the join is load-bearing."""
    from tracesim.format import Trace

    trace = _run(_loop(on_abort="continue"), 0)
    assert not trace.procs  # one process: the records alone
    stripped = Trace(trace.header, [r for r in trace.records if not isinstance(r, SampleContinued)])
    assert "tokens_delivered_exactly_once" in check_trace(stripped, PARTIAL).violated()


def test_on_abort_continue_differs_from_requeue_and_drop():
    digests = {mode: records_digest(_run(_loop(on_abort=mode), 2).records) for mode in ("drop", "requeue", "continue")}
    assert len(set(digests.values())) == 3


@pytest.mark.vllm
@pytest.mark.parametrize("label", ["spans", "first"])
def test_continuation_backends_agree(label):
    pytest.importorskip("vllm")
    from tracesim.sim.backends import compare_backends, run_both

    both = run_both(scenario=_loop(on_abort="continue", continue_label=label))
    assert both["native"].of(SampleContinued)
    agreement = compare_backends(both["native"], both["vllm"])
    assert agreement.records_identical, agreement


# --- request timeouts ---------------------------------------------------------------------------------------

TIMEOUT = dict(request_timeout_ms=60, update_every=0)


def test_timeout_with_fresh_ids_is_clean_and_retries():
    for seed in SEEDS:
        trace = _run(_loop(**TIMEOUT), seed)
        assert any(a.reason == "timeout" and a.side == "client" for a in trace.of(Aborted)), seed
        assert check_trace(trace, Policy(max_version_lag=None)).violated() == [], seed


def test_timeout_reusing_ids_delivers_the_old_incarnations_output_to_the_new():
    for seed in SEEDS:
        trace = _run(_loop(retry_ids="reuse", **TIMEOUT), seed)
        assert "tokens_delivered_exactly_once" in check_trace(trace, Policy(max_version_lag=None)).violated(), seed


def test_timeout_without_abort_leaves_the_first_incarnation_unaccounted():
    for seed in SEEDS:
        trace = _run(_loop(abort_on_timeout=False, **TIMEOUT), seed)
        assert not any(a.reason == "timeout" for a in trace.of(Aborted)), seed
        assert "sample_ends_exactly_once" in check_trace(trace, Policy(max_version_lag=None)).violated(), seed


def test_timeout_settings_change_the_trace():
    base = records_digest(_run(_loop(update_every=0), 0).records)
    runs = [_loop(**TIMEOUT), _loop(**{**TIMEOUT, "request_timeout_ms": 90}), _loop(timeout_retries=2, **TIMEOUT),
            _loop(abort_on_timeout=False, **TIMEOUT)]
    digests = [records_digest(_run(s, 0).records) for s in runs]
    assert len(set(digests + [base])) == len(digests) + 1


def test_timeout_backends_agree():
    pytest.importorskip("vllm")
    from tracesim.sim.backends import compare_backends, run_both

    s = _loop(retry_ids="reuse", **TIMEOUT)
    both = run_both(scenario=s.replace(workload=dataclasses.replace(s.workload, num_prompts=8)))
    assert any(a.reason == "timeout" for a in both["native"].of(Aborted))
    agreement = compare_backends(both["native"], both["vllm"])
    assert agreement.records_identical, agreement


# --- bad settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop, words", [
    ({"on_abort": "resume"}, "[loop].on_abort"),
    ({"continue_label": "last"}, "[loop].continue_label"),
    ({"request_timeout_ms": -1}, "[loop].request_timeout_ms"),
    ({"timeout_retries": -1}, "[loop].timeout_retries"),
    ({"request_timeout_ms": 5, "abort_on_timeout": False, "retry_ids": "reuse"}, "[loop].abort_on_timeout"),
])
def test_bad_client_action_settings_name_the_field(loop, words):
    with pytest.raises(ScenarioError, match=words.replace("[", r"\[").replace("]", r"\]")):
        scenario_from_dict({"loop": loop}, "s.toml")


def test_new_settings_default_to_todays_behaviour():
    loop = LoopPolicy()
    assert (loop.on_abort, loop.continue_label, loop.request_timeout_ms) == ("drop", "spans", 0)


# --- cancellation during a pause ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["abort", "wait", "keep"])
@pytest.mark.parametrize("on_abort", ["drop", "continue"])
def test_cancel_at_a_pause_of_each_mode_is_handled(mode, on_abort):
    """`abort(at=pause:N)` cancels a group as the engine enters a pause: the loop accounts for it in every mode."""
    from tracesim.sim.perturb import parse

    s = _loop(pause_mode=mode, clear_cache=mode != "keep", on_abort=on_abort)
    trace = simulate(RunInputs(s, seed=0, perturbations=(parse("abort(at=pause:1,req=*,scope=group)"),)))
    assert [a for a in trace.of(Aborted) if a.reason == "client" and a.side == "client"]
    policy = Policy(allow_mixed_versions=True, max_version_lag=None, allow_stale_kv=mode == "keep")
    assert check_trace(trace, policy).violated() == []


def test_loop_settings_are_injectable_as_set_switches():
    """`set(on_abort=continue)` and the cache-reset switches act like the scenario settings; bad values are one
    error naming the key and the choices."""
    from tracesim.sim.perturb import PerturbationError, parse_list

    base = _loop(pause_mode="abort", on_abort="drop")
    switched = simulate(RunInputs(base, 0, parse_list("set(on_abort=continue)")))
    direct = simulate(RunInputs(_loop(pause_mode="abort", on_abort="continue"), 0))
    assert switched.of(SampleContinued) and records_digest(switched.records) == records_digest(direct.records)
    assert records_digest(switched.records) != records_digest(simulate(RunInputs(base, 0)).records)
    with pytest.raises(PerturbationError, match="on_abort.*drop, requeue, continue"):
        parse_list("set(on_abort=resume)")
    assert parse_list("set(reset_connector=false)")[0].value is False
