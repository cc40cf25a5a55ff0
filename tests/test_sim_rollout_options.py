"""Rollout's replay options, given at construction: ``stand_in``, ``on_first_frame``, ``on_final_frame``. A real
engine core (native scheduler, model timing) serves requests submitted to it directly, as replay feeds the
recording's adds."""

from __future__ import annotations

import simpy

from tracesim.format.records import Aborted, OutputDelivered, RequestAdded
from tracesim.sim.engine import Engine
from tracesim.sim.rollout import Rollout
from tracesim.sim.scenario import Scenario
from tracesim.sim.scheduler import SimReq
from tracesim.sim.timing import ModelTiming

END_NS = 10**12


def _run(*, abort_at_ns=None, **options):
    """Three requests (stop lengths 3, 4, 5) added to the engine core at t=0 and a client made with
    ``options``; optionally r1 is aborted at ``abort_at_ns``. Returns (records, client, firsts, finals)."""
    s = Scenario()
    env = simpy.Environment()
    records: list = []
    engine = Engine(env, s.engine, ModelTiming(s.steptime, s.engine), records.append, None)
    firsts, finals = [], []
    client = Rollout(env, s, engine, records.append, None, lambda smp: None, lambda g: None,
                     on_first_frame=firsts.append,
                     on_final_frame=lambda sample, reason, digest: finals.append((sample.req_id, reason, digest)),
                     **options)
    for i in range(3):
        engine.submit("add", SimReq(f"r{i}", 20, 16, 3 + i, f"p{i}"))
    if abort_at_ns is not None:
        env.timeout(abort_at_ns).callbacks.append(lambda _e: client.cancel("r1", whole_group=False))
    env.process(engine.run())
    env.run(until=END_NS)
    return records, client, firsts, finals


def test_stand_in_tracks_every_request_it_hears_of_and_forgets_it_at_its_final_frame():
    records, client, firsts, finals = _run(stand_in=True)
    delivered = [r for r in records if type(r) is OutputDelivered]
    assert sorted(firsts) == ["r0", "r1", "r2"]  # one first frame per request
    assert sorted(req_id for req_id, _, _ in finals) == ["r0", "r1", "r2"]
    assert {req_id: reason for req_id, reason, _ in finals} == {"r0": "stop", "r1": "stop", "r2": "stop"}
    final_digests = {r.req_id: r.digest for r in delivered if r.finished}
    assert {req_id: digest for req_id, _, digest in finals} == final_digests
    assert sum(r.num_tokens for r in delivered if r.req_id == "r2") == 5
    assert client.samples == {}  # forgotten at their final frames
    assert client.stand_in and not client.client_records


def test_stand_in_writes_no_client_records():
    records, _client, _firsts, finals = _run(stand_in=True, abort_at_ns=3_000_000)
    assert ("r1", "abort") in [(req_id, reason) for req_id, reason, _ in finals]
    assert [r.side for r in records if type(r) is Aborted] == ["engine"]  # the client's own is the recording's
    assert all(r.side == "engine" for r in records if type(r) is RequestAdded)


def test_a_tracking_client_ignores_frames_of_requests_it_does_not_track():
    records, client, firsts, finals = _run()  # not a stand-in: it submitted none of these
    assert not client.stand_in and client.client_records
    assert not [r for r in records if type(r) is OutputDelivered]
    assert finals == [] and client.samples == {}
    assert len(firsts) > 3  # every frame of an untracked request is announced to on_first_frame
