"""resumed_context_complete on hand-built traces: a preempted request resumed by recomputing its context
passes when the context is its prompt plus every token it emitted, in one chunk or several, and is reported
when the rebuilt context lacks tokens or holds more."""

from __future__ import annotations

import pytest
from check_builder import US, Run

from tracesim.check import check_trace
from tracesim.format import OutReq, SchedReq, StepExecuted, StepScheduled, StepUpdated

INV = "resumed_context_complete"


def _step(run: Run, reqs, sampled: dict, preempted=()) -> None:
    """One engine step of ``reqs`` (SchedReqs); ``sampled``: req_id -> tokens appended by its output."""
    s, t = run.step, run.at()
    run.emit(StepScheduled(t, t + 5 * US, s, tuple(reqs), tuple(preempted)))
    run.emit(StepExecuted(run.at(), run.at(100), s, run.version))
    outs = []
    for q in reqs:
        n = sampled.get(q.req_id, 0)
        toks = []
        for _ in range(n):
            run.out[q.req_id].append(run.out[q.req_id][-1] + 1 if run.out[q.req_id] else 1000)
            toks.append(run.out[q.req_id][-1])
        outs.append(OutReq(q.req_id, n, None, token_ids=tuple(toks)))
    run.emit(StepUpdated(run.at(), run.at(5), s, tuple(outs), run.version))
    run.step += 1


def _preempted_and_resumed(chunks) -> Run:
    """``a`` (8-token prompt) emits 3 tokens, is preempted, and is resumed by recomputing ``chunks`` tokens
    (one chunk per step; the last one samples). The correct context is 8 + 3 = 11 tokens."""
    run = Run()
    run.admit("a", engine=True, client=False)
    _step(run, [SchedReq("a", 8, 0)], {"a": 1})
    _step(run, [SchedReq("a", 0, 1, computed_tokens=8)], {"a": 1})
    _step(run, [SchedReq("a", 0, 1, computed_tokens=9)], {"a": 1})
    _step(run, [], {}, preempted=("a",))  # KV pressure: a loses its blocks
    done = 0
    for k, n in enumerate(chunks):
        last = k == len(chunks) - 1
        _step(run, [SchedReq("a", n, 0, resumed=k == 0, computed_tokens=done)], {"a": 1 if last else 0})
        done += n
    _step(run, [SchedReq("a", 0, 1, computed_tokens=done)], {"a": 1})
    return run


def _violations(run: Run) -> list:
    report = check_trace(run.trace(), None, only=[INV])
    assert INV in report.checked, report.not_checkable
    return [v for v in report.violations if v.invariant == INV]


@pytest.mark.parametrize("chunks", [(11,), (6, 5), (4, 4, 3)])
def test_resume_that_recomputes_prompt_and_emitted_tokens_passes(chunks):
    assert _violations(_preempted_and_resumed(chunks)) == []


@pytest.mark.parametrize("chunks, words", [((10,), "lacks 1 of the 3 token(s)"), ((8,), "lacks 3 of the 3"),
                                           ((6, 4), "lacks 1 of the 3"), ((12,), "holds 1 token(s) more")])
def test_resume_with_another_context_is_reported_at_the_resume(chunks, words):
    found = _violations(_preempted_and_resumed(chunks))
    assert len(found) == 1, found
    v = found[0]
    assert v.req_id == "a" and v.step == 4  # the step that resumed it
    assert words in v.message and "expected 8 + 3" in v.message, v.message


def test_a_request_never_preempted_is_not_judged():
    run = Run()
    run.admit("a", engine=True, client=False)
    _step(run, [SchedReq("a", 8, 0)], {"a": 1})
    _step(run, [SchedReq("a", 0, 1, computed_tokens=8)], {"a": 1})
    assert _violations(run) == []
