"""The recording scheduler: vLLM's own scheduler, with every decision copied into a trace.

Pass ``scheduler_cls="tracesim.record.scheduler.RecordingScheduler"`` to the engine (see
``enable_engine_recording``). vLLM resolves the name inside the spawned engine-core process and calls it like
a scheduler class; ``RecordingScheduler`` then builds a subclass of ``AsyncScheduler`` when the engine's
``scheduler_config.async_scheduling`` is on and of ``Scheduler`` otherwise, so recording never changes which
scheduling path the engine takes.

Each hook reads a few values that are only valid at that moment (times, step index, placeholders, pause
state, KV usage) and queues them with references to vLLM's per-step objects, which vLLM does not mutate
afterwards; ``convert.py`` turns them into records on the sink's background thread. Every hook catches its
own exceptions: the recorder can stop recording, never stop the engine. This is the only module of tracesim,
with ``standalone.py`` and ``workload.py``, that imports vllm.
"""

from __future__ import annotations

import time

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from tracesim.record.engine import EngineRecorder

_now = time.monotonic_ns


class _RecordingMixin:
    """Hooks around the scheduler methods the engine core calls; see vllm/v1/core/sched/interface.py."""

    _tracesim: EngineRecorder | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tracesim = EngineRecorder.start(self, is_async=isinstance(self, AsyncScheduler))

    def add_request(self, request) -> None:
        super().add_request(request)
        rec = self._tracesim
        if rec is not None:
            try:
                rec.on_add(request, _now())
            except Exception as exc:
                rec.failed(exc)

    def schedule(self, *args, **kwargs):
        rec = self._tracesim
        if rec is None:
            return super().schedule(*args, **kwargs)
        t0 = _now()
        out = super().schedule(*args, **kwargs)
        t1 = _now()
        try:
            rec.on_schedule(self, out, t0, t1)
        except Exception as exc:
            rec.failed(exc)
        return out

    def update_from_output(self, scheduler_output, model_runner_output):
        rec = self._tracesim
        if rec is None:
            return super().update_from_output(scheduler_output, model_runner_output)
        t0 = _now()
        try:  # nothing preempted or reset in flight (most steps): no call
            stale = rec.stale_before_update(self, scheduler_output) if rec.maybe_stale else None
        except Exception as exc:
            stale = None
            rec.failed(exc)
        result = super().update_from_output(scheduler_output, model_runner_output)
        t1 = _now()
        try:
            rec.on_update(self, scheduler_output, result, stale, t0, t1)
        except Exception as exc:
            rec.failed(exc)
        return result

    def finish_requests(self, request_ids, finished_status):
        finished = super().finish_requests(request_ids, finished_status)
        rec = self._tracesim
        if rec is not None and finished:
            try:
                rec.on_finish(finished, finished_status, _now())
            except Exception as exc:
                rec.failed(exc)
        return finished

    def set_pause_state(self, pause_state) -> None:
        rec = self._tracesim
        before = self.pause_state if rec is not None else None
        super().set_pause_state(pause_state)
        if rec is not None:
            try:
                rec.on_pause_state(int(before), int(pause_state), _now())
            except Exception as exc:
                rec.failed(exc)

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        rec = self._tracesim
        if rec is None:
            return super().reset_prefix_cache(reset_running_requests, reset_connector)
        try:
            running = [r.request_id for r in self.running] if reset_running_requests else ()
        except Exception:
            running = ()
        t_ns = _now()
        ok = False
        try:
            ok = super().reset_prefix_cache(reset_running_requests, reset_connector)
            return ok
        finally:  # a reset that raises is recorded as failed, and the exception still reaches the engine
            try:
                rec.on_cache_reset(t_ns, bool(ok), reset_running_requests, running)
            except Exception as exc:
                rec.failed(exc)

    def shutdown(self) -> None:
        try:
            super().shutdown()
        finally:
            rec = self._tracesim
            if rec is not None:
                rec.close()


class RecordingSyncScheduler(_RecordingMixin, Scheduler):
    """vLLM's synchronous ``Scheduler``, recorded."""


class RecordingAsyncScheduler(_RecordingMixin, AsyncScheduler):
    """vLLM's ``AsyncScheduler`` (batch queue, output placeholders), recorded."""


class RecordingScheduler:
    """What ``scheduler_cls`` names: picks the recorded twin of the scheduler the engine would have used.

    Calling it returns a ``RecordingAsyncScheduler`` if ``vllm_config.scheduler_config.async_scheduling`` is
    true, else a ``RecordingSyncScheduler``; the arguments are those of ``Scheduler.__init__``.
    """

    def __new__(cls, *args, **kwargs):
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        use_async = bool(getattr(vllm_config.scheduler_config, "async_scheduling", False))
        target = RecordingAsyncScheduler if use_async else RecordingSyncScheduler
        return target(*args, **kwargs)
