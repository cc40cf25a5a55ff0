"""The scheduler interface (tracesim/sim/interface.py): both backends implement it, the engine uses nothing else,
and aborts go through it (``abort_requests``) on either backend."""

from __future__ import annotations

import ast
import inspect
import os

import pytest

from tracesim.sim.interface import SchedulerInterface
from tracesim.sim.scenario import EngineConfig
from tracesim.sim.scheduler import FINISHED, Scheduler, SimReq

SIM = os.path.dirname(inspect.getfile(SchedulerInterface))
MEMBERS = {name for name, _ in inspect.getmembers(SchedulerInterface) if not name.startswith("_")} | {"requests"}


@pytest.fixture(scope="module")
def vllm_ok():
    pytest.importorskip("vllm")
    from tracesim.sim.vllm_scheduler import vllm_available

    if not vllm_available():
        pytest.skip("vllm is installed but tracesim's standalone driver cannot import it")


def _backend(name: str, **engine):
    from tracesim.sim.vllm_scheduler import make_scheduler

    return make_scheduler(EngineConfig(scheduler_backend=name, **engine))


def test_native_scheduler_implements_every_method_of_the_interface():
    assert issubclass(Scheduler, SchedulerInterface)
    missing = [m for m in SchedulerInterface.__abstractmethods__ if not callable(getattr(Scheduler, m, None))
               and m != "pause_state"]
    assert not missing
    s = Scheduler(EngineConfig())
    assert isinstance(s, SchedulerInterface)
    assert s.pause_state == 0 and s.requests == {}


def test_vllm_scheduler_implements_the_interface(vllm_ok):
    from tracesim.sim.vllm_scheduler import VllmScheduler

    assert not getattr(VllmScheduler, "__abstractmethods__", None)  # instantiable: every method defined
    assert isinstance(_backend("vllm"), SchedulerInterface)


def test_engine_calls_only_the_interface():
    """Every ``self.sched.X`` in engine.py is a member of SchedulerInterface (no private or backend-only one)."""
    tree = ast.parse(open(os.path.join(SIM, "engine.py")).read())
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "sched" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert used, "engine.py no longer reaches its scheduler as self.sched: update this test"
    assert used <= MEMBERS, f"engine.py uses {sorted(used - MEMBERS)} beyond SchedulerInterface"


def _three_requests(sched):
    reqs = [SimReq(f"r{i}", 40, 8, 8, f"p{i}") for i in range(3)]
    for r in reqs:
        sched.add(r)
    return reqs


@pytest.mark.parametrize("backend", ["native", "vllm"])
def test_abort_requests_finishes_running_and_waiting_requests(backend, request):
    if backend == "vllm":
        request.getfixturevalue("vllm_ok")
    # room for two running requests: the third waits
    sched = _backend(backend, max_num_seqs=2)
    a, b, c = _three_requests(sched)
    planned, _ = sched.schedule()
    assert [p.req.req_id for p in planned] == ["r0", "r1"]
    assert sched.counts() == (1, 2)
    sched.take_finished()
    usage = sched.kv_usage()
    assert usage > 0

    gone = sched.abort_requests(("r2", "nope", "r0"))  # a waiting one, an unknown id, a running one

    assert [r.req_id for r in gone] == ["r2", "r0"]
    assert sched.counts() == (0, 1) and sched.num_running() == 1
    assert sched.kv_usage() < usage  # r0's blocks are free
    assert (a.status, a.finish_reason, a.incarnation) == (FINISHED, "abort", 1)
    assert (c.status, c.finish_reason, c.incarnation) == (FINISHED, "abort", 1)
    assert b.incarnation == 0 and set(sched.requests) == {"r1"}
    assert sched.has_finished() and sched.take_finished() == ("r2", "r0")
    assert not sched.has_finished() and sched.take_finished() == ()
    # the aborted request's output of the step in flight is stale; the survivor's is applied
    outs = sched.update(planned, 0, 0)
    by_id = {o.req_id: o for o in outs}
    assert by_id["r1"].sampled == 1 and not by_id["r1"].stale
    assert by_id.get("r0") is None or by_id["r0"].sampled == 0


@pytest.mark.parametrize("backend", ["native", "vllm"])
def test_pause_state_is_set_through_the_interface(backend, request):
    if backend == "vllm":
        request.getfixturevalue("vllm_ok")
    sched = _backend(backend)
    _three_requests(sched)
    sched.set_pause_state(1)  # PAUSED_NEW: nothing is admitted
    assert sched.pause_state == 1 and not sched.has_work()
    planned, _ = sched.schedule()
    assert list(planned) == []
    sched.set_pause_state(0)
    assert sched.pause_state == 0 and sched.has_work()
    planned, _ = sched.schedule()
    assert len(planned) == 3

