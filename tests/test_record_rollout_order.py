"""RolloutRecorder.pause_async writes the client's Paused at the call's place in the client's stream: what the
loop's other coroutines record while the pause drains (their final outputs, rewards, drops) follows it.

The engine here is the smallest object with AsyncLLM's ``pause_generation`` coroutine: the property under test
is the recorder's ordering of the loop's own records, which the real engine does not influence (the recording
of a real AsyncLLM through this path is tests/test_record_vllm.py)."""

from __future__ import annotations

import asyncio

import pytest

from tracesim.format import Paused, RewardBound, SampleDropped, read_trace
from tracesim.record.rollout import RolloutRecorder


class _DrainingEngine:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.draining = asyncio.Event()

    async def pause_generation(self, mode: str, clear_cache: bool) -> None:
        self.draining.set()
        await asyncio.sleep(0.02)  # the drain: the loop's other coroutines run meanwhile
        if self.fail:
            raise RuntimeError("engine dead")


async def _loop(rec: RolloutRecorder, engine: _DrainingEngine) -> None:
    async def finisher():
        await engine.draining.wait()
        rec.reward("a", [1, 2, 3], 1.0, version=0)  # a sample that finished during the drain
        rec.dropped(["b"], "aborted")

    rec.reward("z", [4], 0.5, version=0)  # before the pause call
    task = asyncio.create_task(finisher())
    try:
        await rec.pause_async(engine, mode="abort", clear_cache=True)
    finally:
        await task


def test_records_made_during_the_drain_follow_the_clients_paused(tmp_path):
    path = tmp_path / "client.msgpack"
    rec = RolloutRecorder(path)
    asyncio.run(_loop(rec, _DrainingEngine()))
    rec.close()
    records = read_trace(path).records
    kinds = [type(r).__name__ for r in records]
    assert kinds == ["RewardBound", "Paused", "RewardBound", "SampleDropped"], kinds
    paused = records[1]
    assert isinstance(paused, Paused) and paused.side == "client" and paused.mode == "abort"
    during = [r for r in records if isinstance(r, (RewardBound, SampleDropped))][1:]
    assert all(paused.t_ns <= r.t_ns <= paused.end_ns for r in during)  # stream order is time order here


def test_a_failed_pause_writes_no_paused_and_loses_nothing(tmp_path):
    path = tmp_path / "client.msgpack"
    rec = RolloutRecorder(path)
    with pytest.raises(RuntimeError):
        asyncio.run(_loop(rec, _DrainingEngine(fail=True)))
    rec.close()
    kinds = [type(r).__name__ for r in read_trace(path).records]
    assert kinds == ["RewardBound", "RewardBound", "SampleDropped"], kinds
