"""Engine-side recorder state: what each scheduler hook captures on the hot path.

Hooks read values that change later (clock, step counter, placeholders, pause state, KV usage, queue lengths)
and reduce each schedule and update step to plain values at once (``reduce.py``: the compact reduction, while
vLLM's objects are still in the CPU's cache). With the legacy reduction (``TRACESIM_RECORD_REDUCE=legacy``),
and for adds and token ids, they queue references to vLLM's objects (``SchedulerOutput``, the
``EngineCoreOutputs`` returned by ``update_from_output``), which vLLM creates fresh each step and does not
mutate afterwards, and the sink's thread reduces them (``capture.py``); ``convert.Converter``
builds the records in a converter process (``sidecar.py``) or on that thread. Nothing here imports vllm, so
the same code serves the standalone driver and the engine.
"""

from __future__ import annotations

import os
import sys
import time
from operator import attrgetter

from tracesim.format.engine_settings import EngineSettings
from tracesim.format.header import make_header
from tracesim.format.records import ProcessInfo
from tracesim.record.config import RecorderConfig
from tracesim.record.capture import plain
from tracesim.record.convert import Converter
from tracesim.record.reduce import StepReducer, finish_upd, version_label
from tracesim.record.items import (
    PlainAbort, PlainPause, PlainReset, QueuedAdd, QueuedSched, QueuedUpd, ReducedUpd,
)
from tracesim.record.sidecar import ProcessSink
from tracesim.record.sink import RecordSink, host_name, process_anchors

_now = time.monotonic_ns
_placeholders_of = attrgetter("num_output_placeholders")
# The per-step items are built with tuple.__new__: a NamedTuple's own __new__ is a Python call (~0.5 us) on
# the scheduler's critical path; the fields are the same, in declaration order.
_new = tuple.__new__
# Queued engine items hold vLLM's per-step objects (tens of KB for a large batch each): past this many
# (minutes of steps at a normal pace) a stalled writer makes the recorder drop steps, not the engine run
# out of memory.
ENGINE_MAX_PENDING = 20_000


def engine_config_of(scheduler, is_async: bool) -> EngineSettings:
    """Settings of the engine that matter to timing and binding, for the trace header (vLLM's names)."""
    cfg = {"scheduler": "AsyncScheduler" if is_async else "Scheduler", "async_scheduling": is_async}
    try:
        vc = scheduler.vllm_config
        sc, cc = vc.scheduler_config, vc.cache_config
        # Cast: the header's types are checked, and a vLLM may hand out numpy ints or enums.
        full = dict(cfg,
            max_num_seqs=_int(sc.max_num_seqs), max_num_batched_tokens=_int(sc.max_num_batched_tokens),
            enable_chunked_prefill=bool(sc.enable_chunked_prefill),
            enable_prefix_caching=bool(cc.enable_prefix_caching), block_size=_int(cc.block_size),
            num_gpu_blocks=_int(cc.num_gpu_blocks), model=str(vc.model_config.model),
            max_model_len=_int(vc.model_config.max_model_len), max_concurrent_batches=_int(vc.max_concurrent_batches),
            data_parallel_size=_int(vc.parallel_config.data_parallel_size),
            # Admission rules replay needs (getattr: older vLLMs lack them, and then behave as the defaults say).
            scheduler_reserve_full_isl=bool(getattr(sc, "scheduler_reserve_full_isl", False)),
            watermark=float(getattr(sc, "watermark", 0.0)),
            long_prefill_token_threshold=int(getattr(sc, "long_prefill_token_threshold", 0) or 0),
        )
        import vllm  # already loaded: we run inside the engine

        full["vllm_version"] = str(getattr(vllm, "__version__", "unknown"))
        loop = engine_loop_of_caller()
        if loop is not None:
            full["engine_loop"] = loop
        return EngineSettings(full)
    except Exception:  # a vLLM that moved a field: the header just says less
        return EngineSettings(cfg)


def engine_loop_of_caller(max_depth: int = 40) -> str | None:
    """Who will step the engine core being built (the scheduler is made in ``EngineCore.__init__``): "busy"
    for an ``EngineCoreProc`` (its own busy loop), "client" for a plain in-process ``EngineCore`` (stepped by
    ``LLMEngine`` while the client awaits outputs); None when no engine core is on the stack (a driver of our
    own). Read once, when the recorder starts."""
    return _engine_core_of_caller(max_depth)[1]


def _engine_core_of_caller(max_depth: int = 40) -> tuple:
    """(the vLLM ``EngineCore`` being built, "busy" or "client"), or (None, None): see ``engine_loop_of_caller``."""
    try:
        from vllm.v1.engine.core import EngineCore, EngineCoreProc
    except Exception:
        return None, None
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None, None
        owner = frame.f_locals.get("self")
        if isinstance(owner, EngineCoreProc):
            return owner, "busy"
        if isinstance(owner, EngineCore):
            # EngineCoreProc.__init__ calls EngineCore.__init__ with the same self: the Proc check wins first
            return owner, "client"
        frame = frame.f_back
    return None, None


LABEL_LATER = "later"  # label_source_of_caller: the sink's thread reads the label off the outputs


def label_source_of_caller():
    """How the update hook learns a step's weight-version label, which vLLM's ``EngineCore`` stamps on the
    outputs only after ``update_from_output`` returned (``_attach_weight_version``: every ``EngineCoreOutputs``
    of the step gets the core's ``_weight_version``, which changes only between steps):

    * a callable returning the engine core being built (a weak reference), whose ``_weight_version`` the
      hook reads;
    * None where no engine core is on the stack (a driver of our own, which stamps nothing): the label is what
      the outputs carry when the hook runs;
    * ``LABEL_LATER`` for a core without ``_weight_version`` (another vLLM): the hook keeps the outputs and the
      sink's thread reads the label off them, as the legacy reduction does.

    The first two spare the hook keeping vLLM's outputs alive until the sink's thread reads them (freeing a
    256-request step's outputs there, out of the cache, cost ~13 us per step)."""
    core = _engine_core_of_caller()[0]
    if core is None:
        return None
    if not hasattr(core, "_weight_version"):
        return LABEL_LATER
    import weakref

    try:
        return weakref.ref(core)
    except TypeError:  # a core class with __slots__
        return lambda: core


def _int(value):
    return None if value is None else int(value)


def logprobs_mode_of(scheduler) -> str | None:
    """vLLM's ``model_config.logprobs_mode`` (what the returned logprobs mean); None where this vLLM has none."""
    try:
        mode = getattr(scheduler.vllm_config.model_config, "logprobs_mode", None)
        return None if mode is None else str(getattr(mode, "value", mode))
    except Exception:
        return None


def dp_rank_of(scheduler) -> int:
    try:
        return int(scheduler.vllm_config.parallel_config.data_parallel_rank or 0)
    except Exception:
        return 0


def _make_sink(config: RecorderConfig, path, header, on_lost=None) -> RecordSink:
    """The engine's sink: records built in a converter process (default) or on the sink's own thread.
    ``on_lost``: called when an item is lost on its way to the converter (``StepReducer.resync``)."""
    record_tokens = config.record_tokens
    converter = Converter(raw_ids=config.raw_ids)

    def prepare(item):  # queued vLLM objects (adds; every step with the legacy reduction) -> plain values
        if type(item) is ReducedUpd:
            return finish_upd(item)
        return plain(item, record_tokens)

    def convert(item):
        return converter.convert(prepare(item))

    if config.convert_in == "thread":
        return RecordSink(path, header, convert=convert, flush_interval_s=config.flush_interval_s,
                          max_pending=ENGINE_MAX_PENDING, on_lost=on_lost)
    return ProcessSink(path, header, prepare=prepare, convert=convert, options={"raw_ids": config.raw_ids},
                       flush_interval_s=config.flush_interval_s, max_pending=ENGINE_MAX_PENDING, on_lost=on_lost,
                       encoder="msgpack" if config.reduce == "legacy" else "msgspec", nice=config.converter_nice)


class EngineRecorder:
    """Per-scheduler recording state. Create with ``start``; every ``on_*`` is called by a hook in
    ``scheduler.py`` (which catches whatever they raise and reports it through ``failed``)."""

    def __init__(self, sink: RecordSink, is_async: bool, reducer: StepReducer | None = None,
                 record_tokens: bool = False, *, logprobs_mode: str | None = None):
        self.sink = sink
        # The per-step plain items: encoded for the converter's pipe at once, while their lists are in the cache,
        # where the sink sends to a converter process (``ProcessSink.put_encoded``); else queued as they are.
        self.put_plain = getattr(sink, "put_encoded", sink.put)
        self.is_async = is_async
        # The compact reduction (reduce.py) reduces steps in the hooks; None: the legacy one queues vLLM's objects.
        self.reducer = reducer
        self.reduce_updates = reducer is not None and not record_tokens  # token ids: read on the sink's thread
        self.record_sampling = record_tokens  # record_tokens: one SampleSettings per request (parity needs it)
        self.logprobs_mode = logprobs_mode  # the engine's model_config.logprobs_mode, read once at start
        self.label_core = None  # label_source_of_caller(): set by start
        self.step = 0  # index of the next schedule() call
        self.in_flight = 0  # scheduled steps whose output has not been applied yet
        self.maybe_stale: set = set()  # preempted/reset request ids whose in-flight output may be stale

    @classmethod
    def start(cls, scheduler, *, is_async: bool, config: RecorderConfig | None = None,
              path=None) -> "EngineRecorder | None":
        """Start recording for ``scheduler`` if the config (default: environment) enables it. Never raises."""
        try:
            config = config or RecorderConfig.from_env()
            if config.out_dir is None and path is None:
                return None
            mono, wall = process_anchors()
            rank = dp_rank_of(scheduler)
            proc = ProcessInfo("engine-core", host_name(), os.getpid(), rank, mono, wall)
            header = make_header("vllm", (proc,),
                            engine_config=engine_config_of(scheduler, is_async), created_wall_ns=wall)
            out = path if path is not None else config.engine_path(os.getpid(), rank)
            reducer = StepReducer() if config.reduce == "compact" else None
            sink = _make_sink(config, out, header, on_lost=reducer.resync if reducer is not None else None)
            recorder = cls(sink, is_async, reducer, config.record_tokens,
                           logprobs_mode=logprobs_mode_of(scheduler) if config.record_tokens else None)
            recorder.label_core = label_source_of_caller()
            return recorder
        except Exception as exc:  # never take the engine down because recording could not start
            import warnings

            warnings.warn(f"tracesim recorder: not recording ({type(exc).__name__}: {exc})", RuntimeWarning)
            return None

    # --- hooks -----------------------------------------------------------------------------------------

    def on_add(self, request, t_ns: int) -> None:
        # vLLM's block hashes (prefix caching on): at add time they cover exactly the full prompt blocks. The
        # list grows later as outputs are appended, so its length is taken now and the slice made on convert.
        hashes = getattr(request, "block_hashes", None) or ()
        self.sink.put(_new(QueuedAdd, (t_ns, request.request_id, request.prompt_token_ids,
                                       request.sampling_params, hashes, len(hashes), self.record_sampling,
                                       self.logprobs_mode)))

    def on_schedule(self, sched, out, t0_ns: int, t1_ns: int) -> None:
        step = self.step
        self.step = step + 1
        self.in_flight += 1
        out._tracesim_step = step  # read back by on_update: which step this output belongs to
        if out.preempted_req_ids:
            self.maybe_stale.update(out.preempted_req_ids)
        running, waiting = sched.get_request_counts()
        reducer = self.reducer
        if reducer is not None:  # reduced now, while vLLM's objects are in the cache (placeholders read with it)
            self.put_plain(reducer.sched(out, t0_ns, t1_ns, step, sched.requests if self.is_async else None, running,
                                        waiting, self.in_flight, int(sched.pause_state), sched.kv_cache_manager.usage))
            return
        placeholders = None
        if self.is_async:  # counts change at the next update: read them now, in the batch's order
            requests = sched.requests
            try:
                placeholders = list(map(_placeholders_of, map(requests.__getitem__, out.num_scheduled_tokens)))
            except KeyError:  # a scheduled request already gone: 0 for it
                placeholders = [getattr(requests.get(r), "num_output_placeholders", 0)
                                for r in out.num_scheduled_tokens]
        self.sink.put(_new(QueuedSched, (t0_ns, t1_ns, step, out, placeholders, running, waiting, self.in_flight,
                                         int(sched.pause_state), sched.kv_cache_manager.usage)))

    def stale_before_update(self, sched, out):
        """Request ids whose output in ``out`` vLLM will treat as stale (preempted while in flight)."""
        if not self.maybe_stale:
            return None
        stale = []
        requests = sched.requests
        for req_id in self.maybe_stale.intersection(out.num_scheduled_tokens):
            request = requests.get(req_id)
            if request is not None and getattr(request, "num_stale_output_tokens", 0) > 0:
                stale.append(req_id)
        self.maybe_stale.difference_update([r for r in self.maybe_stale if r not in requests or
                                            getattr(requests[r], "num_stale_output_tokens", 0) == 0])
        self.maybe_stale.update(stale)
        return stale or None

    def on_update(self, sched, out, result, stale, t0_ns: int, t1_ns: int) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        step = getattr(out, "_tracesim_step", -1)
        if self.reduce_updates:
            core = self.label_core
            if result and core is not LABEL_LATER:
                if core is None:
                    label = version_label(result)
                else:
                    label = core()._weight_version
                    if label is not None and not isinstance(label, (int, str)):
                        label = str(label)
                self.put_plain(self.reducer.upd(out.num_scheduled_tokens, result, stale, t0_ns, t1_ns, step, label))
            else:  # vLLM's core may yet add outputs to an empty result (iteration details) and stamp them
                upd = self.reducer.upd(out.num_scheduled_tokens, result, stale, t0_ns, t1_ns, step)
                self.sink.put(ReducedUpd(upd, result))
            return
        self.sink.put(_new(QueuedUpd, (t0_ns, t1_ns, step, out.num_scheduled_tokens, result, stale)))

    def on_finish(self, requests, status, t_ns: int) -> None:
        self.sink.put(PlainAbort(PlainAbort.KIND, t_ns, [r.request_id for r in requests],
                                 getattr(status, "name", str(status))))

    def on_pause_state(self, before: int, after: int, t_ns: int) -> None:
        if before != after:
            self.sink.put(PlainPause(PlainPause.KIND, t_ns, before, after))

    def on_cache_reset(self, t_ns: int, ok: bool, reset_running: bool, running) -> None:
        if reset_running:
            self.maybe_stale.update(running)
        self.sink.put(PlainReset(PlainReset.KIND, t_ns, ok, reset_running))

    def failed(self, exc: BaseException) -> None:
        """A hook raised: count the lost event, warn once. Never raises."""
        try:
            self.sink.dropped += 1
            self.sink._warn(f"recording hook failed ({type(exc).__name__}: {exc})")
        except Exception:
            pass

    def close(self) -> None:
        self.sink.close()
