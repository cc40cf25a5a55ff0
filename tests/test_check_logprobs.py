"""The model-free logprob invariants (tracesim/check/logprobs.py) on hand-made traces: each can fail."""

from check_builder import Run, correct_group, logprobs_of, record_logprobs
from tracesim.check import check_trace
from tracesim.format import SampleLogprobs, SampleSettings

BEHAVIOUR = "behaviour_logprobs_match_returned"
PROCESSED = "logprobs_processed_as_trained"


def _report(run):
    return check_trace(run.trace(), only=[BEHAVIOUR, PROCESSED])


def _is_behaviour(r):
    return r.role == "behaviour"


def test_a_correct_run_with_logprobs_passes_both():
    report = _report(correct_group())
    assert report.violations == [] and report.checked == [BEHAVIOUR, PROCESSED]


def test_behaviour_logprobs_recomputed_by_the_trainer_are_reported():
    run = correct_group()
    recs = [r for r in run.records if isinstance(r, SampleLogprobs) and r.role == "behaviour"]
    run.replace(SampleLogprobs, _is_behaviour, logprobs=tuple(x - 0.01 for x in recs[0].logprobs))
    report = _report(run)
    assert [(v.invariant, v.req_id) for v in report.violations] == [(BEHAVIOUR, recs[0].req_id)]
    assert "0.01 nats" in report.violations[0].message


def test_behaviour_logprobs_for_other_tokens_are_reported():
    run = correct_group()
    rec = next(r for r in run.records if isinstance(r, SampleLogprobs) and r.role == "behaviour")
    run.replace(SampleLogprobs, _is_behaviour, token_ids=(7,) + rec.token_ids[1:])
    assert "other token ids" in _report(run).violations[0].message


def test_raw_logprobs_used_as_behaviour_at_temperature_07_are_reported_and_not_at_1():
    run = Run()
    for i, r in enumerate(("a", "b")):
        run.admit(r, "g", i, 2)
    run.generate(["a", "b"])
    record_logprobs(run, ["a"], mode="raw_logprobs", temperature=0.7)
    record_logprobs(run, ["b"], mode="raw_logprobs", temperature=1.0)
    report = _report(run)
    assert [(v.invariant, v.req_id) for v in report.violations] == [(PROCESSED, "a")]
    run.replace(SampleSettings, lambda r: r.req_id == "a", logprobs_mode="processed_logprobs")
    assert _report(run).violations == []


def test_raw_logprobs_the_trainer_replaced_are_not_this_invariant():
    run = Run()
    run.admit("a", "g", 0, 1)
    run.generate(["a"])
    record_logprobs(run, ["a"], mode="raw_logprobs", temperature=0.7)
    run.replace(SampleLogprobs, _is_behaviour, logprobs=tuple(x - 1 for x in logprobs_of("a", 3)))
    assert [v.invariant for v in _report(run).violations] == [BEHAVIOUR]


def test_traces_without_logprobs_records_are_not_checkable():
    run = Run()
    run.admit("a", "g", 0, 1)
    run.generate(["a"])
    report = _report(run)
    assert report.checked == [] and set(report.not_checkable) == {BEHAVIOUR, PROCESSED}
    assert "behaviour" in report.not_checkable[BEHAVIOUR]
