"""The scheduler interface: what the engine core (``engine.py``) calls on its scheduling backend, and when.

Two backends implement it: the native model (``scheduler.Scheduler``) and vLLM's own scheduler driven in
virtual time (``vllm_scheduler.VllmScheduler``); ``vllm_scheduler.make_scheduler`` picks one by
``EngineConfig.scheduler_backend``. The engine uses nothing else of them, as vLLM's ``EngineCore`` uses only
``vllm.v1.core.sched.interface.SchedulerInterface``.

The native ``Scheduler`` is a Cython ``cdef class`` in the compiled build (``scheduler.pxd``), which cannot
derive from a Python class: it is registered as a virtual subclass below, and
``tests/test_sim_interface.py`` checks that it defines every method of the interface in both builds.

Requests are ``scheduler.SimReq``; a schedule is a list of ``scheduler.Planned`` (one per scheduled request,
in schedule order); an update returns one ``OutReq`` per applied ``Planned``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class SchedulerInterface(ABC):
    """A scheduling backend of the simulated engine core.

    ``requests``: req_id -> SimReq of the live (unfinished) requests, in the order they were added. The engine
    reads it to resolve an abort's ids; the client (``rollout.py``) to find a request's group.
    """

    requests: dict

    # --- inputs the engine core applies between two actions ----------------------------------------------------

    @abstractmethod
    def add(self, req) -> None:
        """Called when the engine core takes an "add" input: queue ``req`` (a SimReq) as waiting. It is
        scheduled no earlier than the next ``schedule()`` and, while paused, not before ``set_pause_state``
        unpauses. Raises ValueError where the backend cannot serve it (e.g. vLLM's model length)."""

    @abstractmethod
    def abort_requests(self, req_ids) -> list:
        """Called when the engine core takes an "abort" input from the client: finish each live request among
        ``req_ids`` with reason "abort", wherever it is (waiting, running, or in flight), freeing its KV
        blocks; output of its steps still in flight becomes stale (its incarnation is bumped). Ids that are
        not live are ignored. Returns the SimReqs it finished, in the order of ``req_ids``; their ids are
        reported by the next ``take_finished()``."""

    @abstractmethod
    def abort_all(self) -> list:
        """Called when the engine core takes a pause in mode "abort": ``abort_requests`` of every live request;
        returns them in the order they were added."""

    @abstractmethod
    def set_pause_state(self, state: int) -> None:
        """Called when the engine core takes a pause (``PAUSED_NEW``, or ``PAUSED_ALL`` in mode "keep") or a
        resume (``UNPAUSED``). Paused, ``schedule()`` admits no waiting request; ``PAUSED_ALL`` also schedules
        no running one."""

    @property
    @abstractmethod
    def pause_state(self) -> int:
        """The state last set (``PAUSED_ALL``, ``PAUSED_NEW`` or ``UNPAUSED``); recorded with each step."""

    @abstractmethod
    def reset_prefix_cache(self, reset_running: bool, reset_connector: bool = False) -> tuple:
        """Called when the engine core takes a "reset" input, or when a pause with ``clear_cache`` completes.
        With ``reset_running`` running requests are preempted first (from the back, their in-flight output
        dropped); with ``reset_connector`` an external KV tier is emptied too (vLLM's argument of the same
        name). Returns ``(ok, preempted req_ids)``: ``ok`` is whether the cache (and the tier, when asked) was
        reset."""

    @abstractmethod
    def has_kv_tier(self) -> bool:
        """Whether an external KV tier (an offload cache or KV connector) outlives GPU prefix-cache resets."""

    # --- the busy loop -------------------------------------------------------------------------------------

    @abstractmethod
    def has_work(self) -> bool:
        """Called before each schedule: whether a ``schedule()`` now could schedule anything (running
        requests, or waiting ones while unpaused; nothing in ``PAUSED_ALL``)."""

    @abstractmethod
    def has_finished(self) -> bool:
        """Called before each schedule and when a schedule came out empty: whether requests finished since the
        last ``take_finished()`` (vLLM schedules an empty step to report them)."""

    @abstractmethod
    def schedule(self) -> tuple:
        """Called when the engine core schedules a step (fewer steps in flight than the batch queue's depth,
        and ``has_work() or has_finished()``). Returns ``(planned, preempted)``: a list of ``Planned``, one per
        scheduled request, and the req_ids preempted by this schedule, in preemption order. The engine then
        calls ``take_finished()``, ``counts()`` and ``kv_usage()`` to record the step."""

    @abstractmethod
    def take_finished(self) -> tuple:
        """Called right after a ``schedule()`` that makes a step: the req_ids finished since the previous call,
        in finishing order (vLLM's ``SchedulerOutput.finished_req_ids``); forgets them."""

    @abstractmethod
    def counts(self) -> tuple:
        """Called right after a ``schedule()`` that makes a step: ``(waiting, running)`` request counts."""

    @abstractmethod
    def num_running(self) -> int:
        """Called when a pause may complete and before a cache reset: the number of running requests."""

    @abstractmethod
    def kv_usage(self) -> float:
        """Called right after a ``schedule()`` that makes a step: the fraction of KV blocks in use (0.0-1.0)."""

    @abstractmethod
    def update(self, planned: list, exec_version: int, stamp_version: int) -> list:
        """Called when the engine core applies the output of the oldest step in flight (its forward pass ran
        with weights ``exec_version``; its tokens are stamped ``stamp_version``). ``planned`` is what that
        step's ``schedule()`` returned. Samples a token for each entry that completed its prompt, finishes
        requests at their stop length or ``max_tokens``, and returns an ``OutReq`` per applied entry (finished
        and stale ones included; entries of requests finished while in flight may be skipped)."""


def _register_native() -> None:
    """The native Scheduler implements the interface but cannot inherit it where compiled (a cdef class)."""
    from tracesim.sim.scheduler import Scheduler

    if not issubclass(Scheduler, SchedulerInterface):
        SchedulerInterface.register(Scheduler)


_register_native()

__all__ = ["SchedulerInterface"]
