"""vLLM's real AsyncScheduler / Scheduler driven standalone (no model), recorded."""

import pytest

pytest.importorskip("vllm")

from helpers import finish_counts  # noqa: E402
from tracesim.format import RequestAdded, StepScheduled, StepUpdated  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def async_trace(tmp_path_factory):
    from tracesim.record.standalone import run_standalone

    return run_standalone(str(tmp_path_factory.mktemp("rec") / "async.msgpack"), groups=8, pause_at_step=25)


def test_async_scheduler_schedules_next_step_before_applying_previous_output(async_trace):
    order = [(type(r).__name__, r.step) for r in async_trace.records if isinstance(r, (StepScheduled, StepUpdated))]
    assert order[:3] == [("StepScheduled", 0), ("StepScheduled", 1), ("StepUpdated", 0)]
    assert async_trace.header.engine_config["scheduler"] == "AsyncScheduler"


def test_async_trace_shows_outstanding_placeholders_and_queue_depth_two(async_trace):
    steps = async_trace.of(StepScheduled)
    assert any(req.placeholders >= 2 for s in steps for req in s.reqs)
    assert max(s.queue_depth for s in steps) == 2


def test_steps_are_strictly_ordered_and_each_is_updated_once(async_trace):
    scheduled = [s.step for s in async_trace.of(StepScheduled)]
    updated = [u.step for u in async_trace.of(StepUpdated)]
    assert scheduled == list(range(len(scheduled)))
    assert updated == scheduled
    assert all(s.t_ns <= s.end_ns for s in async_trace.of(StepScheduled))


def test_every_added_request_finishes_exactly_once(async_trace):
    added = [r.req_id for r in async_trace.of(RequestAdded)]
    assert len(added) == len(set(added)) == 32
    assert finish_counts(async_trace) == {req_id: 1 for req_id in added}


def test_sampled_tokens_add_up_to_max_tokens(async_trace):
    # The fake model never samples EOS, so each request generates exactly max_tokens.
    sampled: dict = {}
    for u in async_trace.of(StepUpdated):
        for o in u.outs:
            # A stale frame of a preempted request still appends its tokens (vLLM drops only reset frames).
            sampled[o.req_id] = sampled.get(o.req_id, 0) + o.sampled
    assert sampled == {r.req_id: r.max_tokens for r in async_trace.of(RequestAdded)}


def test_small_kv_cache_preempts_and_marks_stale_frames(async_trace):
    preempted = {rid for s in async_trace.of(StepScheduled) for rid in s.preempted}
    stale = {o.req_id for u in async_trace.of(StepUpdated) for o in u.outs if o.stale}
    resumed = {req.req_id for s in async_trace.of(StepScheduled) for req in s.reqs if req.resumed}
    assert preempted and stale <= preempted and resumed <= preempted and resumed


def test_recording_scheduler_follows_the_async_setting(tmp_path, monkeypatch):
    from tracesim.record.scheduler import RecordingAsyncScheduler, RecordingScheduler, RecordingSyncScheduler
    from tracesim.record.standalone import StandaloneDriver

    monkeypatch.delenv("TRACESIM_RECORD_DIR", raising=False)
    assert isinstance(StandaloneDriver(RecordingScheduler, async_scheduling=True).scheduler, RecordingAsyncScheduler)
    sync = StandaloneDriver(RecordingScheduler, async_scheduling=False).scheduler
    assert isinstance(sync, RecordingSyncScheduler) and sync._tracesim is None  # not enabled: no recorder


def test_a_failing_hook_never_reaches_the_scheduler(tmp_path, monkeypatch):
    from tracesim.record.scheduler import RecordingScheduler
    from tracesim.record.standalone import StandaloneDriver

    monkeypatch.setenv("TRACESIM_RECORD_DIR", str(tmp_path))
    driver = StandaloneDriver(RecordingScheduler, async_scheduling=True)
    rec = driver.scheduler._tracesim

    def broken(*args, **kwargs):
        raise RuntimeError("hook bug")

    monkeypatch.setattr(rec, "on_schedule", broken)
    with pytest.warns(RuntimeWarning, match="recording hook failed"):
        driver.add("r-0123abcd", list(range(3, 40)), max_tokens=4)
        assert driver.run() > 0
    assert not driver.scheduler.has_requests()
    assert rec.sink.dropped > 0
    driver.scheduler.shutdown()
