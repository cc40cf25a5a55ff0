"""The compact per-step reduction (``tracesim.record.reduce``, ``_fastcapture.pyx``): same traces, cheaper.

Real vLLM schedulers driven standalone (``StandaloneDriver``): the compact reduction must record exactly the
trace the legacy one records (``TRACESIM_RECORD_REDUCE=legacy``), compiled or not, and an item lost on its
way to the converter must cost counted drops, never requests named wrongly.
"""

import dataclasses

import msgpack
import pytest

pytest.importorskip("vllm")

from tracesim.record import reduce  # noqa: E402
from tracesim.record.capture import plain  # noqa: E402
from tracesim.record.convert import Converter  # noqa: E402
from tracesim.record.items import CompactSched, PlainUpd, QueuedSched, QueuedUpd, ReducedUpd, from_wire  # noqa: E402

pytestmark = pytest.mark.vllm


def _untimed(trace):  # runs differ only in clock readings
    return [r._replace(**{f: 0 for f in r._fields if f.endswith("_ns") and getattr(r, f) is not None})
            for r in trace.records]


@pytest.mark.parametrize("async_scheduling,record_tokens", [(True, False), (False, False), (True, True)])
def test_compact_reduction_records_the_same_trace_as_the_legacy_one(tmp_path, monkeypatch, async_scheduling,
                                                                    record_tokens):
    from tracesim.record.standalone import run_standalone

    traces = {}
    # Preemption, chunked prefill, a pause with a cache reset, n=4 groups: batches change and stay put.
    for mode, reduce_env, pure in [("legacy", "legacy", "0"), ("compact", "compact", "0"), ("pure", "compact", "1")]:
        monkeypatch.setenv("TRACESIM_RECORD_REDUCE", reduce_env)
        monkeypatch.setenv("TRACESIM_PURE_PYTHON", pure)
        traces[mode] = _untimed(run_standalone(str(tmp_path / f"{mode}.msgpack"), groups=6, pause_at_step=20,
                                               async_scheduling=async_scheduling, record_tokens=record_tokens))
    assert len(traces["legacy"]) > 100
    assert traces["compact"] == traces["legacy"]
    assert traces["pure"] == traces["legacy"]


def _driver(async_scheduling=False, **kw):
    from tracesim.record.standalone import StandaloneDriver

    driver = StandaloneDriver(None, async_scheduling=async_scheduling, num_blocks=48, max_num_batched_tokens=96,
                              max_num_seqs=16, **kw)
    for i in range(12):  # 80-token prompts in 96-token steps: chunked prefills, outputs missing for some
        driver.add(f"{i % 3}_g{i // 3}-{i:08x}", [3 + (i * 7 + j) % 400 for j in range(80)], 4 + i % 5)
    return driver


def _steps(driver):
    """(SchedulerOutput, update_from_output's result) of every step of a run, the result taken at once."""
    sched, steps = driver.scheduler, []
    while sched.has_requests():
        out = sched.schedule()
        steps.append((out, sched.update_from_output(out, driver.fake_output(out))))
    return steps


def test_the_compiled_update_pass_gives_what_the_reference_and_the_legacy_reduction_give():
    steps = _steps(_driver())
    compiled = reduce._compiled_upd_columns
    if compiled is None:
        pytest.skip(f"tracesim.record._fastcapture not built: {reduce.BUILD.reason}")
    seen = {"out_ids": 0, "reasons": 0}
    for i, (out, result) in enumerate(steps):
        expected = reduce.upd_columns(result, out.num_scheduled_tokens)
        assert compiled(result, out.num_scheduled_tokens) == expected, f"step {i}"
        legacy = plain(QueuedUpd(0, 0, i, out.num_scheduled_tokens, result, None))
        assert (legacy.version_label, legacy.out_ids, legacy.sampled, legacy.reasons) == expected
        assert reduce.version_label(result) == legacy.version_label  # read on the sink's thread
        seen["out_ids"] += expected[1] is not None
        seen["reasons"] += expected[3] is not None
    assert seen["out_ids"] and seen["reasons"]  # both rare branches ran

    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason

    outs = [EngineCoreOutput("a", [1, 2]), EngineCoreOutput("b", [], finish_reason=FinishReason.ABORT)]
    for result, scheduled in [
        ({}, {}), (None, {"a": 1}), ({0: EngineCoreOutputs(outputs=outs)}, {"a": 2, "b": 1}),
        ({0: EngineCoreOutputs(outputs=outs)}, {"b": 1, "a": 2}), ({0: EngineCoreOutputs(outputs=outs)}, {"a": 2}),
        ({0: EngineCoreOutputs(outputs=outs[:1]), 1: EngineCoreOutputs(outputs=outs[1:])}, {"a": 2, "b": 1}),
    ]:
        assert compiled(result, scheduled) == reduce.upd_columns(result, scheduled)
    class Subclass(EngineCoreOutput):  # read by attribute: the compiled pass reads slots of vLLM's own type only
        pass

    mixed = [Subclass("a", [1, 2]), outs[1], Subclass("c", [3], finish_reason=FinishReason.STOP), outs[0]]
    for scheduled in [{"a": 2, "b": 1, "c": 1}, {"a": 2, "b": 1, "c": 1, "d": 1}]:
        result = {0: EngineCoreOutputs(outputs=mixed)}
        assert compiled(result, scheduled) == reduce.upd_columns(result, scheduled)
    for label in (3, "v7", 2.5):
        result = {0: EngineCoreOutputs(outputs=outs)}
        result[0].weight_version = label
        assert compiled(result, {}) == reduce.upd_columns(result, {}) and compiled(result, {})[0] == (
            label if isinstance(label, (int, str)) else str(label)) == reduce.version_label(result)


def test_the_compiled_schedule_pass_gives_what_the_reference_gives():
    compiled = reduce._compiled_sched_columns
    if compiled is None:
        pytest.skip(f"tracesim.record._fastcapture not built: {reduce.BUILD.reason}")
    driver = _driver(async_scheduling=True)  # a batch queue of 2: placeholders of 0, 1 and 2
    sched, queue, prev, seen = driver.scheduler, [], None, {"same": 0, "changed": 0, "held": set()}
    while sched.has_requests() or queue:
        if sched.has_requests():
            out = sched.schedule()
            expected = reduce.sched_columns(out.num_scheduled_tokens, prev, sched.requests)
            assert compiled(out.num_scheduled_tokens, prev, sched.requests) == expected
            assert compiled(out.num_scheduled_tokens, prev, None) == expected[:2] + (None, expected[3])
            assert expected[2] == [sched.requests[r].num_output_placeholders for r in out.num_scheduled_tokens]
            seen["same" if expected[3] else "changed"] += 1
            seen["held"].update(expected[2])
            prev = expected[0]
            queue.append((out, driver.fake_output(out)))
        if len(queue) == 2 or (queue and not sched.has_requests()):
            sched.update_from_output(*queue.pop(0))
    assert seen["same"] and seen["changed"] and {0, 1} <= seen["held"]
    for scheduled, prev, requests in [({}, None, {}), ({"a": 1}, ["a"], {}), ({"a": 1, "b": 2}, ["a", "c"], None),
                                      ({"a": 1}, ("a",), None), ({"a": 1}, ["a", "b"], None)]:
        assert compiled(scheduled, prev, requests) == reduce.sched_columns(scheduled, prev, requests)


def _sched_item(reducer, out, step):
    return reducer.sched(out, step, step, step, None, 0, 0, 1, 0, 0.5)


def _sched_stream(lost_step=None, resync=False) -> list:
    """The schedule items of a run; ``resync``: what the sink does after dropping ``lost_step``'s item."""
    driver = _driver()
    sched, reducer, items = driver.scheduler, reduce.StepReducer(), []
    while sched.has_requests():
        out = sched.schedule()
        items.append(_sched_item(reducer, out, len(items)))
        if resync and len(items) - 1 == lost_step:
            reducer.resync()
        sched.update_from_output(out, driver.fake_output(out))
    return items


def _records(stream, lost_step=None):
    """step -> its records, and the steps whose item the converter refused."""
    converter, out, failed = Converter(), {}, []
    for step, item in enumerate(stream):
        if step == lost_step:
            continue
        try:
            out[step] = list(converter.convert(item))
        except ValueError:
            failed.append(step)
    return out, failed


def test_a_lost_schedule_item_never_names_requests_wrongly():
    full = _sched_stream()
    reuses = [i for i, item in enumerate(full) if isinstance(item.batch_ids, int)]
    assert reuses and len(reuses) < len(full)  # decode steps reuse the ids, changed batches send them
    lost = reuses[len(reuses) // 2] - 1  # an item whose successor reuses its ids
    expected, failed = _records(full)
    assert not failed
    # Without a resync, the reuses of the lost step's batch are refused; nothing is recorded wrongly.
    got, failed = _records(full, lost)
    assert failed and failed[0] == lost + 1
    assert all(got[step] == expected[step] for step in got)
    # With it (the sink calls resync when it drops an item), the next item carries its ids: one step lost.
    stream = _sched_stream(lost, resync=True)
    assert isinstance(stream[lost + 1].batch_ids, list) and len(stream) == len(full)
    got, failed = _records(stream, lost)
    assert not failed and got == {step: r for step, r in expected.items() if step != lost}


def test_the_reduce_setting_picks_what_the_hooks_queue(tmp_path):
    from tracesim.record.config import RecorderConfig
    from tracesim.record.engine import EngineRecorder
    from tracesim.record.scheduler import RecordingScheduler
    from tracesim.record.standalone import StandaloneDriver

    assert RecorderConfig.from_env({"TRACESIM_RECORD_REDUCE": "legacy"}).reduce == "legacy"
    assert RecorderConfig.from_env({"TRACESIM_RECORD_REDUCE": "bogus"}).reduce == "compact"
    queued = {}
    saved = EngineRecorder.start
    for mode in ("compact", "legacy"):
        def start(scheduler, *, is_async, config=None, path=None, _mode=mode):
            config = dataclasses.replace(RecorderConfig(out_dir=str(tmp_path)), reduce=_mode)
            return saved(scheduler, is_async=is_async, config=config, path=tmp_path / f"{_mode}.msgpack")

        EngineRecorder.start = start
        try:
            driver = StandaloneDriver(RecordingScheduler, async_scheduling=True)
        finally:
            EngineRecorder.start = saved
        sink = driver.scheduler._tracesim.sink
        sink.stop_thread()
        for i in range(4):
            driver.add(f"r{i}-{i:08x}", [3 + j for j in range(20)], 6)
        for _ in range(5):
            driver.step()
        if mode == "compact":  # the per-step items are encoded for the converter's pipe in the hooks
            assert bytes in {type(item) for item in sink._pending}
        queued[mode] = {type(from_wire(msgpack.unpackb(item, use_list=False, strict_map_key=False)))
                        if type(item) is bytes else type(item) for item in sink._pending}
        driver.scheduler.shutdown()
    # the update's label is read in the hook (no engine core here stamps one later): vLLM's outputs are not kept
    assert CompactSched in queued["compact"] and PlainUpd in queued["compact"] and ReducedUpd not in queued["compact"]
    assert QueuedSched not in queued["compact"]
    assert QueuedSched in queued["legacy"] and QueuedUpd in queued["legacy"] and CompactSched not in queued["legacy"]


def test_the_sink_tells_the_reducer_when_it_drops_items(tmp_path):
    from tracesim.format.records import Header, ProcessInfo
    from tracesim.record.sink import RecordSink

    lost = []
    sink = RecordSink(tmp_path / "t.msgpack", Header(1, 0, "test", "vllm", (ProcessInfo("engine-core", "h", 1),)),
                      max_pending=1, on_lost=lambda: lost.append(1))
    sink.stop_thread()
    for i in range(3):
        sink.put(("not a record", i))
    assert sink.dropped == 2 and len(lost) == 2  # the queue was full twice
    sink.close()
